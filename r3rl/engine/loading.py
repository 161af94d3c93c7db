"""Load a model and tokenizer from a hub id, a local folder, or a LoRA adapter folder.

A folder with adapter_config.json is a peft adapter (what r3rl's LoRA training
saves): its base model is loaded first, from the adapter config's
base_model_name_or_path unless `base=` says otherwise, and the adapter on top.
The tokenizer comes from the adapter folder when it holds one (a run may add a
chat template or tokens), else from the base.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from r3rl.errors import InputError, hub_error_hint  # hub_error_hint: re-exported, tasks use it too

if TYPE_CHECKING:
    from r3rl.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None means CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on CUDA, float32 elsewhere (bfloat16 matmuls are very slow on most CPUs)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"dtype must be 'auto' or one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def _is_local(path: str) -> bool:
    return Path(path).expanduser().exists()


# What the hub accepts as a repo id: "name" or "owner/name". Anything else (./x, a/b/c, ~/m) is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# r3rl's own output root (train.output_dir, eval.output_dir, failures.path): "runs/x" names a run folder.
_LOCAL_ROOTS = ("runs",)


def _looks_like_path(name: str) -> bool:
    """A name that cannot be, or is plainly not meant as, a hub id: ./x, ../x, /x, ~/x, a/b/c, a\\b,
    and "owner/name" where owner is a local folder or r3rl's output root (runs/x): a mistyped local
    path is then reported as a missing folder, not blamed on the hub. "Qwen/Qwen2-1.5B" stays a hub id."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not _HUB_ID.match(name):
        return True
    owner, slash, _ = name.partition("/")
    return bool(slash) and (owner in _LOCAL_ROOTS or Path(owner).is_dir())


_ALIASES: dict[str, str] = {}


def register_model_alias(name: str, path: str | os.PathLike[str]) -> None:
    """Let `name` stand for a model folder anywhere a model is named (config, --model)."""
    _ALIASES[name] = str(path)


def resolve_model_name(name: str) -> str:
    """An alias (registered, or from the `r3rl.models` entry-point group) -> its folder; else `name`.

    A package names its models the way it names tasks:

        [project.entry-points."r3rl.models"]
        mymodel = "mypkg.models:folder"      # a path string, or a function returning one

    A local folder of the same name wins over an alias.
    """
    if name in _ALIASES:
        return _ALIASES[name]
    if not name or Path(name).expanduser().exists():
        return name
    from importlib.metadata import entry_points

    for ep in entry_points(group="r3rl.models"):
        if ep.name == name:
            target = ep.load()
            return str(target() if callable(target) else target)
    return name


# transformers' own bars while it reads a checkpoint already on disk (a hub download keeps its bars)
_LOADING_BARS = ("Loading weights", "Loading checkpoint shards")


@contextlib.contextmanager
def _no_weight_loading_bar():
    """Without transformers' "Loading weights" bar: a second of loading, shown at every eval, mining
    and training start, and again into logs, tells a user nothing they can act on."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # older transformers: leave its bars as they are
        yield
        return

    def hook(factory, args, kwargs):
        if kwargs.get("desc") in _LOADING_BARS:
            return hf_logging.EmptyTqdm(*args, **kwargs)
        return factory(*args, **kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def _adapter_base(adapter_dir: Path) -> str:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise InputError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path; pass base=")
    return str(base)


def load_model(
    name_or_path: str,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    adapter: str | None = None,
    base: str | None = None,
    trust_remote_code: bool = False,
    adapter_trainable: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
    init_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, Any]:
    """(model in eval mode, tokenizer with left padding and a pad token).

    name_or_path: a hub id, a model folder, or a LoRA adapter folder.
    adapter: a LoRA adapter folder to put on top of name_or_path.
    base: overrides the adapter config's base model.
    adapter_trainable: load adapter weights as trainable (to resume LoRA training).
    revision, attn_implementation, init_kwargs: passed to `from_pretrained` (init_kwargs last, so
        it may set anything else, e.g. {"low_cpu_mem_usage": true}).
    Errors (a missing folder, an unreachable or gated hub id) are one sentence naming the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not name_or_path:
        raise InputError("no model given: set model.name_or_path (a hub id or a folder), or pass --model")
    name_or_path = resolve_model_name(name_or_path)
    base = resolve_model_name(base) if base else base
    device_t = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device_t)

    adapter_dir: Path | None = Path(adapter).expanduser() if adapter else None
    base_name = name_or_path
    if _is_local(name_or_path):
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; expected a model or LoRA adapter folder")
        if (folder / "adapter_config.json").is_file() and adapter_dir is None:
            adapter_dir = folder
            base_name = base or _adapter_base(folder)
        elif not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} holds no model: neither config.json (a transformers model) "
                f"nor adapter_config.json (a peft LoRA adapter)"
            )
    elif _looks_like_path(name_or_path):
        from r3rl.runtime.file_checks import relative_note

        raise FileNotFoundError(f"no such model folder: {name_or_path}{relative_note(name_or_path)}")
    elif base is not None:
        base_name = base
    if adapter_dir is not None and not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} holds no adapter_config.json; not a peft adapter folder")
    if _is_local(base_name) and not (Path(base_name).expanduser() / "config.json").is_file():
        raise FileNotFoundError(f"base model folder {base_name} holds no config.json")

    from r3rl.runtime.file_checks import check_model_folder

    for folder in {Path(p).expanduser() for p in (base_name, adapter_dir) if p is not None and _is_local(str(p))}:
        check_model_folder(folder)  # a damaged file is named here, not deep inside transformers
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kwargs.update(init_kwargs or {})
    try:
        with _no_weight_loading_bar():
            model = AutoModelForCausalLM.from_pretrained(base_name, **kwargs)
    except OSError as e:  # transformers turns hub errors (missing, gated, offline) into OSError
        raise FileNotFoundError(hub_error_hint(base_name, "model", e)) from None
    model.to(device_t)
    tokenizer_source = base_name
    if adapter_dir is not None:
        from peft import PeftModel

        with warnings.catch_warnings():
            # peft (0.21) reads the model's deprecated `is_gradient_checkpointing`; nothing here can rename it
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=adapter_trainable)
        if any((adapter_dir / f).is_file() for f in _TOKENIZER_FILES):
            tokenizer_source = str(adapter_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except Exception as e:  # a damaged or foreign tokenizer fails deep inside tokenizers: say which folder
        raise InputError(f"{tokenizer_source}: cannot load the tokenizer ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def load_for_inference(mcfg: "ModelConfig", device: str | torch.device | None = None) -> tuple[Any, Any]:
    """Model + tokenizer for mining / evaluation (a LoRA adapter folder loads on top of its base)."""
    return load_model(
        mcfg.name_or_path, dtype=mcfg.dtype, device=device,
        base=mcfg.base, trust_remote_code=mcfg.trust_remote_code, revision=mcfg.revision or None,
        attn_implementation=mcfg.attn_implementation or None, init_kwargs=mcfg.init_kwargs,
    )

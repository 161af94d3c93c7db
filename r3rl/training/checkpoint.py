"""Checkpoints that a kill never breaks, resume, and the guard against mixing two runs in one folder.

A checkpoint is accelerate's `save_state` (model, optimizer, every rank's RNG
states; under FSDP2 the model and optimizer are folders of per-rank shards) plus
`trainer_state.json` (step, the data position follows from it; the
scheduler's state; each file's size and CRC32), written into a hidden temporary
folder and renamed into place when complete. Only folders holding
trainer_state.json count, so a half-written one is ignored; loading checks every
file against its CRC first and names a damaged one.

With LoRA only the trainable (adapter) weights go into a checkpoint: the frozen
base is the model the run started from and is loaded from there on resume
(`adapter_only_state_hooks`). A fresh run refuses an output folder that holds
another run's checkpoints or metrics (`prepare_output_dir`), so `--resume` can
never pick up a step of an older run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from r3rl.errors import InputError
from r3rl.runtime.io import atomic_write_text

# What marks a folder as holding a run: a later --resume would read these.
RUN_FILES = ("checkpoints", "metrics.jsonl", "episodes.jsonl", "replicas.json", "final", "final-merged", "weights.json")
WEIGHTS_RECORD = "weights.json"  # which weights the run's final folders hold, and of which step

_NAME = re.compile(r"^step-(\d+)$")
FSDP_MODEL = "pytorch_model_fsdp"  # accelerate's folder of an FSDP sharded model state (torch.distributed.checkpoint)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / "trainer_state.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    hook = accelerator.register_save_state_pre_hook(_drop_tied_aliases)
    try:
        accelerator.save_state(str(tmp))
    except Exception as e:  # torch's zip writer reports a full disk as RuntimeError; name the folder instead
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(f"{final}: writing the checkpoint failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                      "check free space and write permission") from None
    finally:
        hook.remove()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        # sizes and CRCs: safetensors has no checksum, so a garbled tensor would otherwise load as garbage
        # (FSDP's sharded model and optimizer are folders of per-rank files: those are fingerprinted too)
        state = {**state, "files": {f.relative_to(tmp).as_posix(): _fingerprint(f) for f in sorted(tmp.rglob("*"))
                                    if f.is_file()}}
        atomic_write_text(tmp / "trainer_state.json", json.dumps(state, indent=2))
        if final.exists():  # saving a step again (a resumed run that had finished): never half-delete it in place
            _discard(final)
        os.replace(tmp, final)  # the moment the checkpoint becomes visible
        atomic_write_text(root / "latest", final.name + "\n")
        for old in checkpoint_dirs(run_dir)[: -keep or None] if keep > 0 else []:
            _discard(old)
    accelerator.wait_for_everyone()
    return final


def _drop_tied_aliases(models, weights, output_dir) -> None:
    """A save_state pre-hook: keep one name per shared tensor (a tied LM head and embedding) in each
    model's state dict, the first, as accelerate's safetensors writer does; it would drop the others
    itself, but log "[RANK 0] Removed shared tensor {...}" on every checkpoint, which no user can act
    on. The files are the same either way, and loading restores the tie from the model's config."""
    from collections import OrderedDict

    import torch
    from accelerate.utils.other import id_tensor_storage

    if len(weights) != len(models):
        return  # FSDP / DeepSpeed save their models themselves
    for i, state in enumerate(weights):
        if not isinstance(state, dict):
            continue
        seen: set[Any] = set()
        kept = OrderedDict()
        for name, tensor in state.items():
            if isinstance(tensor, torch.Tensor):
                storage = id_tensor_storage(tensor)
                if storage in seen:
                    continue
                seen.add(storage)
            kept[name] = tensor
        weights[i] = kept


def _fingerprint(path: Path, size_only: bool = False) -> dict[str, int]:
    import zlib

    out = {"bytes": path.stat().st_size}
    if not size_only:
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 24):
                crc = zlib.crc32(chunk, crc)
        out["crc32"] = crc
    return out


def _discard(folder: Path) -> None:
    """Rename out of sight, then delete: a kill half-way through never leaves a half-deleted
    folder under a name that counts as a checkpoint."""
    gone = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(gone, ignore_errors=True)
    os.replace(folder, gone)
    shutil.rmtree(gone, ignore_errors=True)


def check_files(path: Path) -> dict[str, Any]:
    """Read trainer_state.json and check every state file is whole, naming the first that is not."""
    from r3rl.runtime.file_checks import check_safetensors, check_torch_zip

    state_file = path / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{path} is not a complete r3rl checkpoint (no trainer_state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        int(state["step"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"{state_file}: not a valid trainer state ({type(e).__name__}: {e})") from None
    for name, want in (state.get("files") or {}).items():
        f = path / name
        if not f.is_file():
            raise InputError(f"{f}: missing from the checkpoint")
        got = _fingerprint(f, size_only=True)
        if got["bytes"] != want["bytes"]:
            raise InputError(f"{f}: damaged ({got['bytes']} bytes, {want['bytes']} when saved)")
        if _fingerprint(f)["crc32"] != want["crc32"]:
            raise InputError(f"{f}: damaged (its checksum differs from when it was saved)")
    if not list(path.glob("*.safetensors")) and not list(path.glob("*.bin")) and not list(path.glob(f"{FSDP_MODEL}*/.metadata")):
        raise InputError(f"{path}: the checkpoint holds no model weights")
    for f in sorted(path.glob("*/.metadata")):
        check_dcp_metadata(f)
    for f in sorted(path.glob("*.safetensors")):
        check_safetensors(f)
    for f in sorted([*path.glob("*.bin"), *path.glob("*.pkl")]):
        check_torch_zip(f)
    return state


# What the .metadata pickle of torch.distributed.checkpoint (FSDP2's sharded states) may name: its own
# dataclasses, torch dtypes and sizes, paths. torch reads it with plain pickle.load, which would run any
# callable a crafted file names, so r3rl reads it first with only these allowed.
_DCP_NAMES = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
              ("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("pathlib", "PosixPath"),
              ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "PureWindowsPath")}


def check_dcp_metadata(path: Path) -> None:
    """Unpickle a torch.distributed.checkpoint .metadata file allowing only the names it holds when torch
    writes it; anything else (a crafted file naming os.system, say) is refused before torch reads it."""
    import pickle

    import torch

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            allowed = ((module, name) in _DCP_NAMES or module == "torch.distributed.checkpoint.metadata"
                       or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)))
            if not allowed:
                raise InputError(f"{path}: refused, it names {module}.{name}, which a checkpoint's metadata never "
                                 f"holds (loading it could run code)")
            return super().find_class(module, name)

    try:
        with open(path, "rb") as f:
            Restricted(f).load()
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{path}: damaged checkpoint metadata ({type(e).__name__}: {str(e)[:200]})") from None


def load_checkpoint(accelerator, path: str | Path) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns trainer_state.json. Nothing is unpickled:
    accelerate loads its .bin/.pkl files with torch.load(weights_only=True), and an FSDP2 checkpoint's
    metadata pickles are read with a restricted unpickler first (`check_dcp_metadata`)."""
    from accelerate.utils import DistributedType

    path = Path(path)
    state = check_files(path)
    sharded = (path / f"{FSDP_MODEL}_0" / ".metadata").is_file()
    fsdp_run = accelerator.distributed_type == DistributedType.FSDP
    if fsdp_run and not sharded:
        raise InputError(f"{path} was written by an unsharded (DDP) run, and an FSDP2 run resumes FSDP2 checkpoints only: "
                         f"resume it under configs/accelerate/ddp.yaml, or start the FSDP2 run from a final model")
    try:
        if sharded and not fsdp_run:
            _load_shards_into_replicas(accelerator, path)
        else:
            accelerator.load_state(str(path))
    except Exception as e:  # a file that passed the checks but does not fit this model / optimizer
        raise InputError(f"{path}: cannot restore this checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    return state


def _load_shards_into_replicas(accelerator, path: Path) -> None:
    """Resume an FSDP2 checkpoint in a run whose ranks each hold the whole model (DDP, one process): the
    sharded model and optimizer states are read whole (torch.distributed.checkpoint, no process group
    needed) and set by parameter name; then this rank's RNG states, as accelerate's load_state does."""
    import random
    import tempfile

    import numpy as np
    import torch
    from accelerate.utils import load
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    (model,), (opt,) = accelerator._models, accelerator._optimizers  # the trainer prepares one of each
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path / f"{FSDP_MODEL}_0", f"{tmp}/model.pt")
        dcp_to_torch_save(path / "optimizer_0", f"{tmp}/optimizer.pt")
        weights = torch.load(f"{tmp}/model.pt", weights_only=True)["model"]
        optim = torch.load(f"{tmp}/optimizer.pt", weights_only=True)["optimizer"]
    set_model_state_dict(model, weights)
    set_optimizer_state_dict(model, getattr(opt, "optimizer", opt), optim)
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if rng.is_file():  # a run on more processes than the FSDP2 one: the others keep their seeded states
        states = load(rng)
        random.setstate(states["random_state"])
        np.random.set_state(states["numpy_random_seed"])
        torch.set_rng_state(states["torch_manual_seed"])


def prepare_output_dir(run_dir: str | Path, resume: bool, overwrite: bool, is_main: bool) -> None:
    """Stop a fresh run from writing into an older run's folder, unless told to resume or overwrite.

    A mined failure set or a config.yaml alone do not count (`r3rl mine` may write into the run folder
    first); checkpoints, metrics, episodes or a final model do. With `overwrite` they are deleted, so
    nothing of the older run can be resumed or mixed into the new run's logs.
    """
    root = Path(run_dir)
    found = [name for name in RUN_FILES if _non_empty(root / name)]
    if not found or resume:
        return
    if not overwrite:
        raise InputError(
            f"{root} already holds a training run ({', '.join(found)}): pass --resume to continue it, or "
            f"--overwrite (train.overwrite_output_dir=true) to delete it and start again, or choose another train.output_dir"
        )
    if is_main:
        for name in found:
            path = root / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def record_final_weights(run_dir: str | Path, step: int, folders: list[Path]) -> None:
    """weights.json: {folder name: {"step", "weights"}} of the model folders just saved, so a report or card
    can tell whether metrics.jsonl's last step is the one final/ holds (a resumed run stopped early)
    and whether final/ was replaced since (provenance fingerprints: a few hundred KiB read per folder)."""
    from r3rl.engine.provenance import folder_weights

    record = {Path(f).name: {"step": step, "weights": folder_weights(f)} for f in folders}
    atomic_write_text(Path(run_dir) / WEIGHTS_RECORD, json.dumps(record, indent=2) + "\n")


def check_resume_step(run_dir: str | Path, resume: bool | str, steps: int) -> None:
    """Refuse to resume a checkpoint past train.steps: the run would report "resumed at step N", train
    nothing, and save the N-step weights as final/ of a run configured for fewer steps."""
    ckpt = latest_checkpoint(run_dir) if resume is True else Path(resume) if resume else None
    if ckpt is None:
        return
    try:
        step = int(json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # load_checkpoint names what is wrong with it
    if step > steps:
        raise InputError(f"{ckpt} is at step {step}, past train.steps={steps}: set train.steps to at least {step} to "
                         f"continue that run, or train into another train.output_dir to start again")


def _non_empty(path: Path) -> bool:
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def adapter_only_state_hooks(accelerator, is_adapter_model) -> None:
    """Make accelerate's save_state / load_state keep only the trainable weights of LoRA models.

    accelerate hands these hooks the prepared models and, on save, their state dicts before they are
    written; a LoRA model's entry is cut to its trainable (adapter) tensors. On load, that model is
    restored here (non-strict, then checked: the missing keys must be exactly the frozen ones) and
    taken off accelerate's list, whose strict load would miss the base. The optimizer, scheduler and
    RNG states are saved and loaded by accelerate as usual.
    """
    from safetensors.torch import load_file

    def trainable(model) -> set[str]:
        return {n for n, p in model.named_parameters() if p.requires_grad}

    def save_hook(models, weights, output_dir) -> None:
        if len(weights) != len(models):
            return  # FSDP / DeepSpeed save their models themselves
        for i, model in enumerate(models):
            if is_adapter_model(model):
                keep = trainable(model)
                weights[i] = {k: v for k, v in weights[i].items() if k in keep}

    def load_hook(models, input_dir) -> None:
        for i, model in enumerate(list(models)):
            if not is_adapter_model(model):
                continue
            name = "model.safetensors" if i == 0 else f"model_{i}.safetensors"
            state = load_file(str(Path(input_dir) / name), device=str(next(model.parameters()).device))
            try:
                result = model.load_state_dict(state, strict=False)
            except RuntimeError as e:  # shapes differ: another rank r or other target modules
                raise InputError(f"{input_dir}/{name} does not match this LoRA model (another train.lora_r or "
                                 f"lora_target_modules?): {str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}") from None
            frozen = set(model.state_dict()) - trainable(model)  # tied weights and buffers included
            if result.unexpected_keys or set(result.missing_keys) - frozen:
                raise InputError(
                    f"{input_dir}/{name} does not match this LoRA model: unexpected keys "
                    f"{result.unexpected_keys[:3]}, missing trainable keys {sorted(set(result.missing_keys) - frozen)[:3]}"
                )
            models.remove(model)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

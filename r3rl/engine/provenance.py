"""What made a file: the identity of a model (name, revision, a fingerprint of its weights).

A failure set is a model's *own* failed attempts, so it records the model that mined it
(r3rl/mining/failure_set.py) and is reused only by the same model. The weights fingerprint tells two
fine-tunes of one base apart without reading gigabytes: it hashes each weight file's size
and a strided sample of its bytes (the first 64 KiB, which hold a safetensors header with
every tensor's name, dtype and shape, then 64 blocks of 4 KiB spread evenly over the file).
Fine-tuning changes every tensor, so every sampled block of the data differs. A model that
exists only in memory is fingerprinted from a strided sample of each parameter's values.

Evaluations record the fingerprint too (results.json "weights", and their resume state), so a resumed
or repeated evaluation never mixes or replaces another model's results, and reports and model cards
check that the numbers they show still describe the weights in the run's final/ (reporting/run.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
HEAD_BYTES = 64 * 1024
BLOCKS, BLOCK_BYTES = 64, 4096
PARAM_SAMPLES = 64  # values taken from each parameter of an in-memory model


def file_fingerprint(paths: list[Path]) -> str:
    """sha256 over (name, size, head, strided blocks) of each file, in name order."""
    h = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(HEAD_BYTES))
            if size > HEAD_BYTES:
                step = (size - HEAD_BYTES) / BLOCKS
                for i in range(BLOCKS):
                    f.seek(HEAD_BYTES + int(i * step))
                    h.update(f.read(BLOCK_BYTES))
    return "files:" + h.hexdigest()[:32]


def weight_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]


def parameter_fingerprint(model: Any) -> str:
    """sha256 over each parameter's name, shape and a strided sample of its values (for a model without files)."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            flat = p.detach().reshape(-1)
            idx = torch.linspace(0, flat.numel() - 1, steps=min(PARAM_SAMPLES, flat.numel())).long()
            h.update(f"{name}\0{tuple(p.shape)}\0".encode())
            h.update(flat[idx].to(device="cpu", dtype=torch.float32).numpy().tobytes())
    return "params:" + h.hexdigest()[:32]


def _local_folder(name_or_path: str, revision: str) -> Path | None:
    """The folder a model's files are in: a local folder or alias, else the hub cache's snapshot (offline)."""
    from r3rl.engine.loading import resolve_model_name

    resolved = resolve_model_name(name_or_path)
    if resolved and Path(resolved).expanduser().is_dir():
        return Path(resolved).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name_or_path, revision=revision or None, local_files_only=True))
    except Exception:  # noqa: BLE001 - not in the cache (or not a hub id): there is nothing to fingerprint
        return None


def _folder_weights(folder: Path, depth: int = 0) -> str:
    files = weight_files(folder)
    fingerprint = file_fingerprint(files) if files else ""
    adapter = folder / "adapter_config.json"
    if adapter.is_file() and depth == 0:  # an adapter's outputs depend on its base as much as on itself
        try:
            base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
        except (ValueError, AttributeError):  # a damaged adapter_config.json: the loader names it, not this
            base = ""
        base_folder = _local_folder(str(base), "") if base else None
        fingerprint += "+" + (_folder_weights(base_folder, 1) if base_folder else f"base:{base}")
    return fingerprint


def folder_weights(folder: str | os.PathLike[str]) -> str:
    """The weights fingerprint of a model folder (as model_identity gives for a config naming it), "" when
    it holds no weights; what reports and model cards check results.json's "weights" against."""
    folder = Path(folder)
    return _folder_weights(folder) if folder.is_dir() else ""


def model_identity(model_cfg: Any = None, engine: Any = None) -> dict[str, str]:
    """{"name_or_path", "revision", "weights"} of the model a config names (model section), else of
    the model inside an engine. "weights" is "" when nothing could be fingerprinted."""
    if model_cfg is not None and model_cfg.name_or_path:
        name, revision = str(model_cfg.name_or_path), str(model_cfg.revision or "")
        folder = _local_folder(name, revision)
        weights = _folder_weights(folder) if folder is not None else ""
        if model_cfg.base:
            base_folder = _local_folder(str(model_cfg.base), "")
            weights += "+" + (_folder_weights(base_folder, 1) if base_folder else f"base:{model_cfg.base}")
        return {"name_or_path": name, "revision": revision, "weights": weights}
    model = getattr(engine, "model", None)
    if model is None:  # an engine without a model (the scripted one): its class is all there is
        return {"name_or_path": f"engine:{type(engine).__name__}", "revision": "", "weights": ""}
    from r3rl.engine.hf import unwrap_model

    module = unwrap_model(model)
    config = getattr(module, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    folder = Path(name) if name and os.path.isdir(name) else None
    if folder is not None and weight_files(folder):
        return {"name_or_path": name, "revision": "", "weights": _folder_weights(folder)}
    return {"name_or_path": name, "revision": "", "weights": parameter_fingerprint(module)}


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two identities name the same model: equal weight fingerprints when both have one (an alias and
    its folder are one model), else equal name and revision."""
    if a.get("weights") and b.get("weights"):
        return a["weights"] == b["weights"]
    return (a.get("name_or_path"), a.get("revision")) == (b.get("name_or_path"), b.get("revision"))

"""CPU linear layers the engine rewrites: half weights multiplied in float32 where bfloat16 is emulated, wide ones in slabs.

A model loaded in bfloat16 (`model.dtype: bfloat16`, to halve its memory) generates on a
CPU without bfloat16 units (no AVX512-BF16 or AMX: AMD before Zen 4, Intel before Cooper
Lake) at the speed of PyTorch's emulated bfloat16 matmul, which is several times slower than
float32 (BENCHMARKS.md, "bfloat16 on CPU": 6.5 vs 17.5 GFLOP/s at a decode shape on an AVX2
EPYC). Inside `half_matmuls(model, "auto")` every `F.linear` whose weight is bfloat16 or
float16 on such a CPU converts input, weight and bias to float32, multiplies, and rounds the
result back to the input's dtype. The rest of the model (embeddings, norms, activations, the
residual stream, the KV cache) stays in the model's dtype.

Why results barely change: the inputs are already bfloat16 values, so their float32 copies are
exact; the products are accumulated in float32 and rounded to bfloat16 once, which is what
oneDNN's native bfloat16 kernels do too. Outputs differ from the emulated kernel's only by the
order of the float32 additions. The cost is one conversion pass over each weight per forward
(the whole model once per decode step), which at a decode batch of 64 rows is a fraction of the
float32 matmul time it buys (BENCHMARKS.md).

Wide float32 weights (at least 4 slabs of about 4 MiB: an LM head over a 150k vocabulary, a
wide MLP projection) are multiplied a slab of rows at a time too, without any conversion: each
output is the same dot product, measured bit-identical, and one [151936, 896] head took 0.6x the
time of one call at 32-64 rows. Small models (every test model, the demo) have no such weight.

Where it does nothing: narrow float32 weights, float32 master weights under bf16 autocast
(autocast casts below this layer), any CUDA tensor, and half weights on a CPU that multiplies
them natively. `mode="native"` turns all of it off (PyTorch's kernels as the model calls them);
`mode="float32"` applies the float32 products to half weights on any CPU (tests use it to check
the rewrite on machines with bfloat16 units too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MODES = ("auto", "native", "float32")
_HALF = (torch.bfloat16, torch.float16)


@cache
def cpu_has_fast_half(dtype: torch.dtype = torch.bfloat16) -> bool:
    """oneDNN multiplies this half dtype natively on this CPU (AVX512-BF16 / AMX / AVX512-FP16), not by emulation."""
    probe = (torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == torch.bfloat16
             else torch.ops.mkldnn._is_mkldnn_fp16_supported)
    try:
        return bool(probe())
    except (AttributeError, RuntimeError):
        return False


def _emulated(weight: torch.Tensor) -> bool:
    return weight.dtype in _HALF and weight.device.type == "cpu" and not cpu_has_fast_half(weight.dtype)


def _wide_float32(weight: torch.Tensor) -> bool:
    """A float32 CPU weight of at least 4 slabs: an LM head over a large vocabulary, a wide MLP projection."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and weight.dim() == 2
            and weight.shape[0] >= 4 * _slab_rows(weight.shape[1]))


# Weights converted a slab of output rows at a time, each slab multiplied while it is still in
# cache: converting a whole [4864, 896] weight first cost 1.44x a float32 matmul at 64 rows, slabs
# of 4 MiB 0.96x, and the [151936, 896] LM head 1.67x whole vs 0.48x in slabs (2 threads, AVX2
# EPYC). Narrow weights (fewer than 4 slabs) are converted whole: slabs of them measured slower.
# Float32 weights gain from slabs too: the [151936, 896] head in slabs took 0.58-0.64x of one call
# at 32-64 rows (0.79x at 8), [4864, 896] 0.62-0.98x, bit-identical results; narrow ones 1.0-1.3x.
_SLAB_BYTES = 4 << 20
_MIN_SLAB_ROWS = 256


def _slab_rows(in_features: int) -> int:
    return max(_MIN_SLAB_ROWS, _SLAB_BYTES // (4 * in_features))


def _slabbed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear of a wide float32 weight a slab of rows at a time: the same values (every output is the same
    dot product over the same K), measured bit-identical, and faster on CPU than one call (module comment)."""
    rows = _slab_rows(weight.shape[1])
    return torch.cat([F.linear(x, weight[i:i + rows], None if bias is None else bias[i:i + rows])
                      for i in range(0, weight.shape[0], rows)], dim=-1)


def _float32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear of the float32 values of x, weight and bias, rounded back to x's dtype."""
    x32 = x.float()
    rows = _slab_rows(weight.shape[1])
    if weight.shape[0] < 4 * rows:
        out = F.linear(x32, weight.float(), None if bias is None else bias.float())
        return out.to(x.dtype)
    parts = [F.linear(x32, weight[i:i + rows].float(), None if bias is None else bias[i:i + rows].float()).to(x.dtype)
             for i in range(0, weight.shape[0], rows)]
    return torch.cat(parts, dim=-1)


class _Float32Linear(TorchFunctionMode):
    """Routes F.linear over half CPU weights (only the emulated ones unless every_half) through float32 products."""

    def __init__(self, every_half: bool = False):
        super().__init__()
        self.every_half = every_half

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            if _rewritten(weight, self.every_half):
                rewrite = _slabbed_linear if weight.dtype == torch.float32 else _float32_linear
                return rewrite(x, weight, bias)
        return func(*args, **kwargs)


def _rewritten(weight: torch.Tensor, every_half: bool) -> bool:
    """Whether F.linear over this weight is rewritten: emulated half (every CPU half weight if every_half), or wide float32."""
    half_cpu = weight.dtype in _HALF and weight.device.type == "cpu"
    return _emulated(weight) or (every_half and half_cpu) or _wide_float32(weight)


def needs_float32_matmuls(module: torch.nn.Module) -> bool:
    """Whether any of the module's linear weights is a half dtype this CPU only emulates."""
    return any(isinstance(m, torch.nn.Linear) and _emulated(m.weight) for m in module.modules())


def has_wide_float32(module: torch.nn.Module) -> bool:
    """Whether any of the module's linear weights is a wide float32 CPU weight (multiplied in slabs)."""
    return any(isinstance(m, torch.nn.Linear) and _wide_float32(m.weight) for m in module.modules())


@contextmanager
def half_matmuls(module: torch.nn.Module, mode: str = "auto") -> Iterator[None]:
    """Within this block: half linear layers multiplied in float32 (the emulated ones under auto, all under
    float32) and wide float32 ones in slabs; native changes nothing."""
    if mode not in MODES:
        raise ValueError(f"half_matmul must be one of {', '.join(MODES)}, got {mode!r}")
    every_half = mode == "float32"
    use = mode != "native" and any(isinstance(m, torch.nn.Linear) and _rewritten(m.weight, every_half)
                                   for m in module.modules())
    with _Float32Linear(every_half) if use else nullcontext():
        yield

"""CPU linear layers the engine multiplies its own way (`generation.cpu_matmul`): half weights in float32 where bfloat16 is emulated, wide float32 ones in slabs.

A model loaded in bfloat16 (`model.dtype: bfloat16`, to halve its memory) generates on a
CPU without bfloat16 units (no AVX512-BF16 or AMX: AMD before Zen 4, Intel before Cooper
Lake) at the speed of PyTorch's emulated bfloat16 matmul, which is several times slower than
float32 (BENCHMARKS.md, "bfloat16 on CPU": 6.5 vs 17.5 GFLOP/s at a decode shape on an AVX2
EPYC). Under `cpu_matmul="auto"` every `nn.Linear` whose weight is bfloat16 or float16 on such
a CPU converts input, weight and bias to float32, multiplies, and rounds the result back to the
input's dtype. The rest of the model (embeddings, norms, activations, the residual stream, the
KV cache) stays in the model's dtype.

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

Where it does nothing: narrow float32 weights (master weights under bf16 autocast included:
autocast casts below this layer, so a wide one is slabbed and each slab cast), any CUDA tensor,
and half weights on a CPU that multiplies them natively. `native` turns all of it off (PyTorch's kernels as the model calls them);
`float32` applies the float32 products to half weights on any CPU (tests use it to check the
rewrite on machines with bfloat16 units too).

How it is applied: nothing process-wide. `LinearRewrite` picks the model's affected `nn.Linear`
layers once per generate call, and `swapped()` gives just those layers their rewritten forward
for the duration of one engine forward (r3rl/engine/call.py): code that runs between forwards,
such as a verifier called from inside generation, and every other module see plain PyTorch.
Subclasses of `nn.Linear` with their own forward (quantized layers) are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache, partial

import torch
import torch.nn.functional as F

from r3rl.config import CpuMatmul

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


def _rewritten_forward(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward of a rewritten layer: slabs for a wide float32 weight, float32 products for a half one."""
    rewrite = _slabbed_linear if layer.weight.dtype == torch.float32 else _float32_linear
    return rewrite(x, layer.weight, layer.bias)


class LinearRewrite:
    """The linear layers of one model that `mode` rewrites (module docstring), swapped in only inside `swapped()`."""

    def __init__(self, module: torch.nn.Module, mode: str = CpuMatmul.AUTO):
        mode = CpuMatmul.parse(mode, "cpu_matmul")
        every_half = mode == CpuMatmul.FLOAT32
        self.layers = [] if mode == CpuMatmul.NATIVE else [
            m for m in module.modules()
            if isinstance(m, torch.nn.Linear) and type(m).forward is torch.nn.Linear.forward
            and _rewritten(m.weight, every_half)]
        self._forwards = [partial(_rewritten_forward, m) for m in self.layers]

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The layers' rewritten forwards for the block (an instance attribute each), removed after it.

        Written straight into each layer's __dict__ (what nn.Module.__setattr__ does for a plain value,
        at a tenth of its cost: 169 layers of a 0.5B model take about 0.1 ms per forward)."""
        for layer, forward in zip(self.layers, self._forwards):
            vars(layer)["forward"] = forward
        try:
            yield
        finally:
            for layer in self.layers:
                vars(layer).pop("forward", None)


@contextmanager
def cpu_matmuls(module: torch.nn.Module, mode: str = CpuMatmul.AUTO) -> Iterator[None]:
    """Within this block, the module's own linear layers multiply as `mode` says (module docstring); native
    changes nothing. The engine enters `LinearRewrite.swapped` around each forward instead."""
    with LinearRewrite(module, mode).swapped():
        yield

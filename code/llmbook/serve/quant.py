"""Weight-only quantization of `nn.Linear` layers from scratch: int8 absmax and zero-point, group-wise int4, and
GPTQ (@sec-inference-quant).

A weight matrix W (out, in) is stored as small integers q and a few floating-point numbers per row or per group
of `group_size` input columns, and multiplied as (q - zero) * scale. Symmetric (absmax) quantization maps
[-max|w|, max|w|] onto [-127, 127]; asymmetric (zero-point) quantization maps [min w, max w] onto
[0, 2^bits - 1], which wastes no codes when a row is not centred on zero. Smaller groups follow the weights
more closely at the price of more scales. GPTQ [@frantar2023gptq] quantizes one input column at a time and
spreads each column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
of the layer's inputs on calibration data, so the layer's *outputs* change as little as possible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

METHODS = ("int8", "int8-zp", "int4", "gptq")
FUSED_MAX_ROWS = 16  # above this many input rows, dequantizing once and using the float matmul is faster


@dataclass(frozen=True)
class QuantConfig:
    """Which scheme: `int8` (per-channel absmax), `int8-zp` (per-channel zero-point), `int4` (group-wise
    zero-point, round to nearest) or `gptq` (group-wise int4 with GPTQ's error compensation)."""

    method: str = "int8"
    group_size: int = 64  # input columns sharing one scale and zero (int4 and gptq)
    weight_bits: int = 4  # int4 and gptq: 4, or 3 or 2 levels' worth stored in the same 4-bit container
    damp: float = 0.01  # GPTQ: fraction of the mean Hessian diagonal added to its diagonal
    block_size: int = 128  # GPTQ: columns updated together before the lazy batch update

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quantization method {self.method!r} is not one of {METHODS}")
        if not isinstance(self.group_size, int) or self.group_size <= 0 or self.group_size % 2:
            raise ValueError(f"group_size must be a positive even integer, got {self.group_size!r}")
        if not 0 < self.damp < 1:
            raise ValueError(f"damp must be in (0, 1), got {self.damp!r}")
        if self.weight_bits not in (2, 3, 4) or self.method.startswith("int8") and self.weight_bits != 4:
            raise ValueError(f"weight_bits must be 2, 3 or 4 (int4 and gptq only), got {self.weight_bits!r}")
        if self.block_size % self.group_size and self.group_size % self.block_size:
            raise ValueError(f"block_size={self.block_size} and group_size={self.group_size}: one must divide the other")

    @property
    def bits(self) -> int:
        return 8 if self.method.startswith("int8") else self.weight_bits

    @property
    def groups(self) -> int | None:
        """Columns per scale; None means one scale per output channel (row)."""
        return None if self.method.startswith("int8") else self.group_size


# ------------------------------------------------------------------------------------------- the quantizers
def absmax_quantize(w: Tensor, bits: int = 8) -> tuple[Tensor, Tensor]:
    """Symmetric per-row quantization: q = round(w / scale) in [-(2^(b-1) - 1), 2^(b-1) - 1], scale = max|w| / that."""
    qmax = 2 ** (bits - 1) - 1
    scale = (w.abs().amax(dim=1, keepdim=True) / qmax).clamp(min=1e-12)
    q = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8)
    return q, scale.squeeze(1)


def zeropoint_params(w: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point per row of w so that [min(w, 0), max(w, 0)] maps onto [0, 2^bits - 1]."""
    qmax = 2**bits - 1
    lo, hi = w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def zeropoint_quantize(w: Tensor, bits: int, group_size: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric quantization per row (group_size None) or per group of columns: (q, scale, zero), q in [0, 2^b - 1].

    scale and zero have shape (out, n_groups); w is recovered as (q - zero) * scale.
    """
    out_f, in_f = w.shape
    g = in_f if group_size is None else group_size
    if in_f % g:
        raise ValueError(f"in_features={in_f} is not a multiple of group_size={g}")
    wg = w.reshape(out_f * (in_f // g), g)
    scale, zero = zeropoint_params(wg, bits)
    q = torch.clamp(torch.round(wg / scale[:, None]) + zero[:, None], 0, 2**bits - 1)
    return q.reshape(out_f, in_f).to(torch.uint8), scale.reshape(out_f, -1), zero.reshape(out_f, -1)


def pack_int4(q: Tensor) -> Tensor:
    """Two 4-bit values per byte along the input dimension: byte j holds columns 2j (low nibble) and 2j+1."""
    if q.shape[1] % 2:
        raise ValueError(f"int4 packing needs an even number of columns, got {q.shape[1]}")
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack([low, high], dim=-1).reshape(packed.shape[0], -1)


# ------------------------------------------------------------------------------------------ the layer
class QuantLinear(nn.Module):
    """A weight-only quantized `nn.Linear`: integer weights plus scales (and zero points) as buffers.

    `forward` dequantizes the weight and multiplies in the input's dtype; symmetric int8 uses PyTorch's fused
    int8-weight matrix multiply where it exists (the kernel torchao's int8 weight-only mode runs on CPU).
    """

    def __init__(self, in_features: int, out_features: int, method: str, group_size: int | None,
                 bias: bool, bits: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.method, self.group_size = in_features, out_features, method, group_size
        self.bits = bits or (8 if method.startswith("int8") else 4)
        n_groups = 1 if group_size is None else in_features // group_size
        if method == "int8":
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scale", torch.ones(out_features))
        else:
            cols = in_features if method == "int8-zp" else in_features // 2
            self.register_buffer("qweight", torch.zeros(out_features, cols, dtype=torch.uint8))
            self.register_buffer("scale", torch.ones(out_features, n_groups))
            self.register_buffer("zero", torch.zeros(out_features, n_groups))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig,
                    quantized: tuple[Tensor, Tensor, Tensor] | None = None) -> "QuantLinear":
        """Quantize `linear` by round to nearest, or store GPTQ's `quantized` (q, scale, zero) as they are."""
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, config.method, config.groups, linear.bias is not None,
                    config.bits)
        if config.method == "int8":
            layer.qweight, layer.scale = absmax_quantize(w, 8)
        else:
            q, layer.scale, layer.zero = quantized or zeropoint_quantize(w, config.bits, config.groups)
            layer.qweight = q if config.bits == 8 else pack_int4(q)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def dequantize(self) -> Tensor:
        """The float weight (out, in) this layer multiplies by."""
        if self.method == "int8":
            return self.qweight.float() * self.scale[:, None]
        q = self.qweight if self.method == "int8-zp" else unpack_int4(self.qweight)
        g = self.in_features if self.group_size is None else self.group_size
        q = q.float().reshape(self.out_features, -1, g)
        return ((q - self.zero[..., None]) * self.scale[..., None]).reshape(self.out_features, self.in_features)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features  # the fused kernel is built for decoding: a few rows at a time
        if self.method == "int8" and rows <= FUSED_MAX_ROWS and x.device.type == "cpu" and x.dtype == torch.float32 \
                and hasattr(torch, "_weight_int8pack_mm"):
            y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features), self.qweight, self.scale)
            y = y.reshape(*x.shape[:-1], self.out_features)
            return y if self.bias is None else y + self.bias
        return F.linear(x, self.dequantize().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, method={self.method}, "
                f"bits={self.bits}, group_size={self.group_size}, bias={self.bias is not None}")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers()) + (
            0 if self.bias is None else self.bias.numel() * 4)


# ----------------------------------------------------------------------------------------------- GPTQ
def gptq_quantize(weight: Tensor, hessian: Tensor, bits: int = 4, group_size: int = 64, damp: float = 0.01,
                  block_size: int = 128) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ [@frantar2023gptq]: group-wise (q, scale, zero) for `weight`, chosen to keep ||(W - Q) X|| small.

    `hessian` is X X^T summed over calibration inputs (in, in). Columns are quantized left to right; each
    column's error, divided by the diagonal of the upper Cholesky factor of H^-1, is subtracted from the
    remaining columns (within a block at once, beyond it in one lazy update). Group scales are fixed from the
    updated weights when the group's first column is reached, as in the reference implementation.
    """
    w = weight.detach().float().clone()
    h = hessian.detach().float().clone()
    n = w.shape[1]
    if n % group_size:
        raise ValueError(f"in_features={n} is not a multiple of group_size={group_size}")
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diag(h).mean() * torch.eye(n, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q_out = torch.zeros_like(w, dtype=torch.uint8)
    scales, zeros = [], []
    block_size = max(block_size, group_size)
    for i1 in range(0, n, block_size):
        i2 = min(i1 + block_size, n)
        w1, err1, hinv1 = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % group_size == 0:
                scale, zero = zeropoint_params(w1[:, i: i + group_size], bits)
                scales.append(scale)
                zeros.append(zero)
            q_int = torch.clamp(torch.round(w1[:, i] / scale) + zero, 0, 2**bits - 1)
            q_out[:, col] = q_int.to(torch.uint8)
            q = (q_int - zero) * scale
            err = (w1[:, i] - q) / hinv1[i, i]
            w1[:, i:] -= err[:, None] * hinv1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return q_out, torch.stack(scales, dim=1), torch.stack(zeros, dim=1)


def _linears(module: nn.Module, skip: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    skip = tuple(skip)
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.startswith(s + ".") for s in skip)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def quantize_model(model: nn.Module, config: QuantConfig, calibration: Tensor | None = None,
                   skip: Iterable[str] = ("lm_head",), progress: Callable[[str], None] | None = None) -> nn.Module:
    """Replace every `nn.Linear` (except those under `skip`) with a `QuantLinear`, in place; returns the model.

    GPTQ needs `calibration` token ids (N, T): the model runs on them once per transformer block, so each
    block's Hessians see the outputs of the blocks before it *after* their quantization. The tied output
    head is skipped by default (quantizing it would also change the input embedding it shares weights with).
    """
    if config.method != "gptq":
        for name, lin in _linears(model, skip):
            _replace(model, name, QuantLinear.from_linear(lin, config))
        return model
    if calibration is None:
        raise ValueError("GPTQ needs calibration token ids (N, T)")
    groups: dict[str, list[tuple[str, nn.Linear]]] = {}
    for name, lin in _linears(model, skip):  # one group per transformer block ("blocks.3.attn.c_attn" -> "blocks.3")
        key = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else name
        groups.setdefault(key, []).append((name, lin))
    for key, layers in groups.items():
        hessians = {name: torch.zeros(lin.in_features, lin.in_features, device=lin.weight.device)
                    for name, lin in layers}
        counts = dict.fromkeys(hessians, 0)

        def hook(name: str):
            def accumulate(_module, inputs, _output):
                x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
                hessians[name] += x.T @ x
                counts[name] += x.shape[0]
            return accumulate

        handles = [lin.register_forward_hook(hook(name)) for name, lin in layers]
        try:
            with torch.no_grad():
                for batch in calibration.split(8):
                    model(batch.to(next(model.parameters()).device))
        finally:
            for h in handles:
                h.remove()
        for name, lin in layers:
            quantized = gptq_quantize(lin.weight, 2 * hessians[name] / max(counts[name], 1), config.bits,
                                      config.group_size, config.damp, config.block_size)
            _replace(model, name, QuantLinear.from_linear(lin, config, quantized))
        if progress is not None:
            progress(f"GPTQ: quantized {key}")
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers, counting a tied (shared) tensor once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


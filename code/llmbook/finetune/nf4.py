"""4-bit NormalFloat (NF4) quantization from scratch, as in QLoRA [@dettmers2023qlora] (@sec-finetune-qlora).

Weights are cut into blocks of 64 values; each block is scaled by its absolute maximum into [-1, 1] and every value
is replaced by the index of the nearest of 16 levels placed at quantiles of a normal distribution (the NF4
codebook), two 4-bit indices per byte. Double quantization then stores the per-block scales themselves in 8 bits
(centred on their mean, linearly in blocks of 256 scales), which takes the overhead from 0.5 to about 0.13 bits per
weight. `NF4Weight` holds a frozen weight this way and dequantizes it on the fly; `nf4_linear` is the matching
forward whose backward re-dequantizes instead of keeping a full-precision copy for the gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The outermost quantile used by QLoRA (and bitsandbytes' `create_normal_map`): the largest level sits at
# norm.ppf(0.9677083), about 1.85 standard deviations, before normalisation to 1.
NF4_OFFSET = 0.9677083


def nf4_codebook(offset: float = NF4_OFFSET) -> Tensor:
    """The 16 NF4 levels in [-1, 1]: 8 positive and 7 negative normal quantiles plus an exact zero.

    Positive levels are the quantiles at 8 evenly spaced probabilities from `offset` down to 0.5 (excluded),
    negative ones at 7 such probabilities, so zero is represented exactly and the positive side gets one more
    level; everything is divided by the largest level. Computed in float64 with torch's inverse normal CDF.
    """
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).float()


NF4_CODE = nf4_codebook()
_MIDPOINTS = (NF4_CODE[1:] + NF4_CODE[:-1]) / 2
# byte -> the two levels it packs (high nibble first): dequantizing is one table lookup per byte
_BYTE_LEVELS = torch.stack([NF4_CODE[torch.arange(256) >> 4], NF4_CODE[torch.arange(256) & 0x0F]], dim=1)


def quantize_blocks(x: Tensor, blocksize: int = 64) -> tuple[Tensor, Tensor]:
    """NF4 indices (uint8, one per value) and float32 absmax scales of `x` flattened into blocks (zero-padded)."""
    flat = x.detach().float().flatten()
    pad = (-flat.numel()) % blocksize
    blocks = F.pad(flat, (0, pad)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny)[:, None]
    idx = torch.bucketize(normed, _MIDPOINTS.to(x.device))  # nearest level: count of midpoints below the value
    return idx.to(torch.uint8).flatten(), absmax


def pack(idx: Tensor) -> Tensor:
    """Two 4-bit indices per byte, the first in the high nibble (the layout bitsandbytes uses)."""
    if idx.numel() % 2:
        idx = F.pad(idx, (0, 1))
    return (idx[0::2] << 4) | idx[1::2]


def unpack(packed: Tensor) -> Tensor:
    """Inverse of `pack`: one uint8 index per value."""
    return torch.stack([packed >> 4, packed & 0x0F], dim=1).flatten()


@dataclass
class QuantizedScales:
    """Double quantization: absmax scales as uint8 codes of (scale - offset), linear per block of 256 scales."""

    codes: Tensor  # uint8, one per scale
    step: Tensor  # float32, one per block of scales: the value of one code step
    offset: Tensor  # float32 scalar: the mean scale
    blocksize: int = 256

    @classmethod
    def quantize(cls, absmax: Tensor, blocksize: int = 256) -> QuantizedScales:
        offset = absmax.mean()
        centred = absmax - offset
        pad = (-centred.numel()) % blocksize
        blocks = F.pad(centred, (0, pad)).view(-1, blocksize)
        step = blocks.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127
        codes = (blocks / step[:, None]).round().clamp(-127, 127).to(torch.int8)
        return cls(codes.flatten()[:absmax.numel()].view(torch.uint8), step, offset, blocksize)

    def dequantize(self) -> Tensor:
        codes = self.codes.view(torch.int8).float()
        return codes * self.step.repeat_interleave(self.blocksize)[:codes.numel()] + self.offset


class NF4Weight(nn.Module):
    """A frozen weight stored in NF4: packed 4-bit indices plus (double-quantized) block scales (@sec-finetune-qlora).

    All state lives in buffers, so it moves with `.to(device)` and saves with the model's state dict.
    """

    def __init__(self, weight: Tensor, blocksize: int = 64, double_quant: bool = True) -> None:
        super().__init__()
        if blocksize <= 0 or blocksize % 2:
            raise ValueError(f"blocksize must be a positive even number, got {blocksize}")
        self.shape, self.blocksize, self.double_quant = tuple(weight.shape), blocksize, double_quant
        idx, absmax = quantize_blocks(weight, blocksize)
        self.register_buffer("packed", pack(idx))
        if double_quant:
            q = QuantizedScales.quantize(absmax)
            self.register_buffer("absmax_codes", q.codes)
            self.register_buffer("absmax_step", q.step)
            self.register_buffer("absmax_offset", q.offset)
        else:
            self.register_buffer("absmax", absmax)

    def scales(self) -> Tensor:
        """The per-block absmax scales (decoded from 8 bits when double-quantized)."""
        if self.double_quant:
            return QuantizedScales(self.absmax_codes, self.absmax_step, self.absmax_offset).dequantize()
        return self.absmax

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight in `dtype`: codebook value of each index times its block's scale."""
        n = math.prod(self.shape)
        values = _BYTE_LEVELS.to(self.packed.device).index_select(0, self.packed.int()).view(-1, self.blocksize)
        return values.mul_(self.scales()[:, None]).flatten()[:n].view(self.shape).to(dtype)

    def nbytes(self) -> int:
        """Bytes of storage: 4 bits per weight plus the scales."""
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        return f"shape={self.shape}, blocksize={self.blocksize}, double_quant={self.double_quant}"


class _NF4Matmul(torch.autograd.Function):
    """x W^T with W dequantized in the forward and again in the backward, so no full-precision W is kept."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: NF4Weight) -> Tensor:  # type: ignore[override]
        ctx.weight = weight
        return x @ weight.dequantize(x.dtype).t()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad @ ctx.weight.dequantize(grad.dtype), None


def nf4_linear(x: Tensor, weight: NF4Weight, bias: Tensor | None = None) -> Tensor:
    """F.linear with a frozen NF4 weight; gradients flow to `x` only (@sec-finetune-qlora)."""
    y = _NF4Matmul.apply(x, weight)
    return y + bias if bias is not None else y

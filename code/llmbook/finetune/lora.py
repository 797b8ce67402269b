"""LoRA from scratch [@hu2022lora]: low-rank adapters on frozen linear layers, injected by module name, merged
and unmerged, saved on their own; with an NF4 base it is QLoRA [@dettmers2023qlora] (@sec-finetune-lora).

A `LoRALinear` computes `x W^T + b + (alpha / r) * dropout(x) A^T B^T` with W (and b) frozen, A (r x in) drawn like
a linear layer's weight and B (out x r) zero, so training starts from the base model exactly. Only A and B are
trained: r (in + out) numbers per layer instead of in x out. The frozen weight keeps its name (`<layer>.weight`),
so a merged model has the plain model's state dict.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import Tensor, nn

from llmbook.fileio import atomic_write
from llmbook.finetune.nf4 import NF4Weight, nf4_linear

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# GPT-2-shaped and Llama-shaped blocks of llmbook.model.GPT (attention and MLP projections)
DEFAULT_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "mlp.w1", "mlp.w2", "mlp.w3")


@dataclass
class LoRAConfig:
    """Rank, scaling, dropout and which linear layers get adapters (`targets`: name suffixes or glob patterns).

    `r = 0` means no adapters (full fine-tuning). `quantize = "nf4"` stores the frozen weights in 4 bits (QLoRA).
    `train_tokens` makes the embedding rows of tokens added for the chat format trainable (their ids), since a
    frozen base has never learned them (PEFT's `trainable_token_indices`).
    """

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    quantize: str = "none"
    blocksize: int = 64
    train_tokens: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def number(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        if not integer(self.r) or self.r < 0:
            raise ValueError(f"[lora] r must be a non-negative integer, got {self.r!r}")
        if not number(self.alpha) or not self.alpha > 0:
            raise ValueError(f"[lora] alpha must be positive, got {self.alpha!r}")
        if not number(self.dropout) or not 0 <= self.dropout < 1:
            raise ValueError(f"[lora] dropout must be in [0, 1), got {self.dropout!r}")
        if self.quantize not in ("none", "nf4"):
            raise ValueError(f"[lora] quantize={self.quantize!r} is not one of ('none', 'nf4')")
        if self.quantize == "nf4" and self.r == 0:
            raise ValueError("[lora] quantize='nf4' needs adapters (r > 0): a 4-bit base is frozen")
        if not integer(self.blocksize) or self.blocksize <= 0 or self.blocksize % 2:
            raise ValueError(f"[lora] blocksize must be a positive even integer, got {self.blocksize!r}")
        if (not isinstance(self.targets, list) or not self.targets
                or not all(isinstance(t, str) and t for t in self.targets)):
            raise ValueError(f"[lora] targets must be a non-empty list of module-name patterns, got {self.targets!r}")
        if not isinstance(self.train_tokens, list) or not all(integer(t) and t >= 0 for t in self.train_tokens):
            raise ValueError(f"[lora] train_tokens must be a list of token ids, got {self.train_tokens!r}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class LoRALinear(nn.Module):
    """A frozen linear layer (float or NF4) plus a trainable low-rank update B A (@sec-finetune-lora)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0, quantize: str = "none",
                 blocksize: int = 64) -> None:
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got {r}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.r, self.scaling = r, alpha / r
        if quantize == "nf4":
            self.weight = None
            self.nf4 = NF4Weight(base.weight.detach(), blocksize)
        else:  # the base layer's own tensors, frozen: injecting adapters into a large model copies nothing
            self.weight = base.weight.requires_grad_(False)
            self.nf4 = None
        self.bias = None if base.bias is None else base.bias.requires_grad_(False)
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's (and PEFT's) init of A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.nf4 is not None:
            y = nf4_linear(x, self.nf4, self.bias)
        else:
            y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        # scale the rank-r activations (cheap) rather than the output, and fuse the add into the second matmul
        h = F.linear(self.dropout(x), self.lora_A) * self.scaling
        return torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, self.r), self.lora_B.t()).view(y.shape)

    def delta(self) -> Tensor:
        """The update the adapter adds to the weight: (alpha / r) B A, shaped like W."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold B A into W, so inference costs one matmul (float base only)."""
        if self.nf4 is not None:
            raise ValueError("cannot merge into a 4-bit weight in place; use merged_linear() for a float copy")
        if not self.merged:
            self.weight += self.delta().to(self.weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract B A from W again (up to float rounding), restoring the separate adapter."""
        if self.merged:
            self.weight -= self.delta().to(self.weight.dtype)
            self.merged = False

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain `nn.Linear` with W + (alpha / r) B A (the 4-bit base is dequantized first)."""
        w = self.nf4.dequantize(self.lora_A.dtype) if self.nf4 is not None else self.weight
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device,
                           dtype=w.dtype)
        linear.weight.copy_(w if self.merged else w + self.delta().to(w.dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}, "
                f"base={'nf4' if self.nf4 is not None else 'float'}")


def matches(name: str, patterns: list[str]) -> bool:
    """Whether module `name` is targeted: a pattern matches as a glob, or as a dotted suffix of the name."""
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.endswith("." + p) for p in patterns)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Freeze `model` and replace every `nn.Linear` whose name matches `cfg.targets` by a `LoRALinear`.

    Returns the names replaced (ValueError when none match). With `cfg.train_tokens`, the rows of those token
    ids in the input embedding `wte` (tied to the output layer in GPT-2 shapes) stay trainable through a gradient
    mask; everything else is frozen.
    """
    if cfg.r <= 0:
        raise ValueError("apply_lora needs r > 0 (r = 0 means full fine-tuning)")
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, cfg.targets)]
    if not names:
        linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(f"[lora] targets {cfg.targets} match no linear layer; the model has e.g. {linear[:6]}")
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, child, LoRALinear(getattr(owner, child), cfg.r, cfg.alpha, cfg.dropout, cfg.quantize,
                                         cfg.blocksize))
    if cfg.train_tokens:
        train_token_rows(model, cfg.train_tokens)
    return names


def train_token_rows(model: nn.Module, ids: list[int]) -> None:
    """Make only the embedding rows of `ids` trainable: the rest of the gradient is zeroed by a hook.

    The other rows stay put because their gradient is zero and the book's optimizer never decays embeddings
    (`llmbook.train.optim.param_groups`); an optimizer that decays them would shrink the frozen rows.
    """
    weight = model.wte.weight
    rows = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    rows[torch.as_tensor(ids, device=weight.device)] = 1.0
    weight.requires_grad_(True)
    model.wte.train_tokens = sorted(set(ids))  # read by trainable_fraction
    weight.register_hook(lambda grad: grad * rows.to(grad.device, grad.dtype))


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` by a plain `nn.Linear` holding W + (alpha / r) B A, as PEFT's `merge_and_unload`."""
    for name, layer in lora_layers(model).items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.merged_linear())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_fraction(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each tensor counted once; for train_tokens only the unmasked rows."""
    seen, trainable, total = set(), 0, 0
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if p.requires_grad:
                hooked = getattr(module, "train_tokens", None) if name == "weight" else None
                trainable += p.numel() if hooked is None else len(hooked) * p.shape[1]
        if isinstance(module, LoRALinear) and module.nf4 is not None:
            total += math.prod(module.nf4.shape)
    return trainable, total


def base_fingerprint(model: nn.Module, skip_tokens: list[int] = ()) -> str:
    """SHA-256 over the frozen base weights (names, shapes, values): an adapter only fits the model it came from.

    Embedding rows of `skip_tokens` (the chat tokens an adapter trains and carries itself) are left out.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(base_state(model).items()):
        if skip_tokens and name == "wte.weight":
            keep = torch.ones(tensor.shape[0], dtype=torch.bool)
            keep[list(skip_tokens)] = False
            tensor = tensor[keep.to(tensor.device)]
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def base_state(model: nn.Module) -> dict[str, Tensor]:
    """The frozen base's tensors (each shared tensor once), without adapters; a 4-bit base is dequantized."""
    out = {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] not in ("lora_A", "lora_B")}
    out.update({n: b for n, b in model.named_buffers() if ".nf4." not in n})
    for name, layer in lora_layers(model).items():
        if layer.nf4 is not None:
            out[f"{name}.weight"] = layer.nf4.dequantize()
        elif layer.merged:
            out[f"{name}.weight"] = layer.weight - layer.delta()
    return out


def adapter_state(model: nn.Module, cfg: LoRAConfig) -> dict[str, Tensor]:
    """Only what training changed: every A and B, and the trained token rows of the embedding."""
    state = {f"{n}.{k}": getattr(m, k).detach().cpu().contiguous() for n, m in lora_layers(model).items()
             for k in ("lora_A", "lora_B")}
    if cfg.train_tokens:
        state["wte.train_tokens"] = model.wte.weight.detach()[cfg.train_tokens].cpu().contiguous()
    return state


def save_adapter(model: nn.Module, cfg: LoRAConfig, out_dir: str | Path, fingerprint: str,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write `adapter_model.safetensors` (adapter tensors only) and `adapter_config.json` (rank, targets, base)."""
    out = Path(out_dir)
    data = save(adapter_state(model, cfg), metadata={"format": "pt", "base_sha256": fingerprint})
    atomic_write(out / ADAPTER_WEIGHTS, lambda f: f.write(data), mode="wb")
    config = {"lora": cfg.to_dict(), "base_sha256": fingerprint, **(extra or {})}
    atomic_write(out / ADAPTER_CONFIG, lambda f: json.dump(config, f, indent=2))
    return out


def read_adapter_config(adapter_dir: str | Path) -> tuple[LoRAConfig, dict[str, Any]]:
    """The `LoRAConfig` and the whole JSON of an adapter folder, with errors naming the file and field."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (not an adapter folder)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: malformed JSON: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("lora"), dict):
        raise ValueError(f"{path}: field 'lora' is missing or not an object")
    if not isinstance(config.get("base_sha256"), str):
        raise ValueError(f"{path}: field 'base_sha256' is missing")
    try:
        return LoRAConfig(**config["lora"]), config
    except TypeError as err:
        raise ValueError(f"{path}: field 'lora': {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_adapter_tensors(weights: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """The tensors of an adapter file, checked before use: a safetensors file holding exactly the `expected` names
    and shapes, in a float dtype, every value finite. Names and shapes are read from the header before any tensor
    data, so a file with extra or oversized tensors is refused without being read."""
    from safetensors import SafetensorError, safe_open

    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist")
    try:
        with safe_open(str(weights), framework="pt") as f:
            names = set(f.keys())
            if names != set(expected):
                diff = sorted(names ^ set(expected))[:3]
                raise ValueError(f"{weights}: adapter tensors do not match the targeted layers (e.g. {diff})")
            for name in sorted(names):
                view = f.get_slice(name)
                if tuple(view.get_shape()) != expected[name]:
                    raise ValueError(f"{weights}: tensor {name} has shape {tuple(view.get_shape())}, "
                                     f"expected {expected[name]}")
                if view.get_dtype() not in ("F16", "BF16", "F32", "F64"):
                    raise ValueError(f"{weights}: tensor {name} has dtype {view.get_dtype()}, expected a float type")
            state = {name: f.get_tensor(name) for name in sorted(names)}
    except SafetensorError as err:
        raise ValueError(f"{weights}: not a readable safetensors file ({err})") from None
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{weights}: tensor {name} holds NaN or infinite values")
    return state


def load_adapter(model: nn.Module, adapter_dir: str | Path, fingerprint: str | None = None) -> LoRAConfig:
    """Inject and load the adapter in `adapter_dir` into a base `model`; refuse an adapter made for another base.

    `fingerprint` is the base's `base_fingerprint` without the adapter's trained token rows (computed here when not
    given). Everything is checked before the model is touched, so a refused adapter leaves it as it was.
    """
    adapter_dir = Path(adapter_dir)
    cfg, config = read_adapter_config(adapter_dir)
    vocab, width = model.wte.weight.shape
    bad = [t for t in cfg.train_tokens if t >= vocab]
    if bad:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: field 'lora.train_tokens': token id {bad[0]} is outside "
                         f"this model's vocabulary of {vocab}")
    fingerprint = fingerprint or base_fingerprint(model, skip_tokens=cfg.train_tokens)
    if config["base_sha256"] != fingerprint:
        raise ValueError(f"{adapter_dir / ADAPTER_CONFIG}: field 'base_sha256' is {config['base_sha256'][:12]}..., "
                         f"but this base model is {fingerprint[:12]}...: the adapter was trained on another model")
    targets = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and matches(n, cfg.targets)}
    expected = {k: v for n, m in targets.items()
                for k, v in ((f"{n}.lora_A", (cfg.r, m.in_features)), (f"{n}.lora_B", (m.out_features, cfg.r)))}
    if cfg.train_tokens:
        expected["wte.train_tokens"] = (len(cfg.train_tokens), width)
    state = read_adapter_tensors(adapter_dir / ADAPTER_WEIGHTS, expected)
    tokens = state.pop("wte.train_tokens", None)
    apply_lora(model, LoRAConfig(**{**cfg.to_dict(), "train_tokens": []}))
    layers = {f"{n}.{k}": getattr(m, k) for n, m in lora_layers(model).items() for k in ("lora_A", "lora_B")}
    with torch.no_grad():
        for name, tensor in state.items():
            layers[name].copy_(tensor)
        if tokens is not None:
            model.wte.weight[cfg.train_tokens] = tokens.to(model.wte.weight)
    return cfg

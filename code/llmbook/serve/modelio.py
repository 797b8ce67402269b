"""Servable model folders: safetensors weights plus a small JSON spec, for quantized, pruned and distilled models
(@sec-inference-quant).

A folder written by `save_model` holds `model.safetensors`, `tokenizer.json` and `model.json`:

```json
{"format": "llmbook-model", "version": 1, "model": {GPTConfig fields},
 "quantization": null | {"method": "int4", "group_size": 64, "layers": ["blocks.0.attn.c_attn", ...]},
 "tokenizer": "tokenizer.json", "eos_token": "<|endoftext|>",
 "weights": {"file": "model.safetensors", "bytes": 123, "sha256": "..."}, "source": {...}}
```

Loading checks the spec field by field, the weights' size and sha256, every tensor's name, shape and dtype
against the architecture, and the ranges of quantized values, and reports the first problem in one line.
`load_servable` also accepts a training run or checkpoint of `llmbook train`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmbook.costs.params import count_params
from llmbook.fileio import file_sha256, replace_dir
from llmbook.model import GPT, GPTConfig
from llmbook.serve.quant import METHODS, QuantConfig, QuantLinear, _linears, _replace, quantize_model

SPEC = "model.json"
FORMAT = "llmbook-model"
VERSION = 1
EOS = "<|endoftext|>"


@dataclass
class Servable:
    """A model ready to serve: the network, its tokenizer, the end-of-text id and where it came from."""

    model: GPT
    tokenizer: Any  # tokenizers.Tokenizer
    eos_id: int
    name: str
    info: dict[str, Any] = field(default_factory=dict)
    chat: Any = None  # llmbook.finetune.chat.ChatFormat of a chat model (its folder has chat_template.jinja)

    def encode(self, text: str) -> list[int]:
        """Token ids of user text; special-token strings in it (`<|endoftext|>`) stay plain text."""
        from llmbook.finetune.chat import encode_text

        return encode_text(self.tokenizer, text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def save_model(model: GPT, tokenizer: Any, out_dir: str | os.PathLike, source: dict[str, Any] | None = None,
               quant: QuantConfig | None = None, chat: Any = None) -> Path:
    """Write `model` (possibly with `QuantLinear` layers) as a servable folder, atomically (temp folder, rename).

    `chat` (a `ChatFormat`) is saved as `chat_template.jinja`, which makes the folder a chat model.
    """
    out = Path(out_dir)
    layers = sorted(name for name, m in model.named_modules() if isinstance(m, QuantLinear))
    if layers and quant is None:
        raise ValueError("the model has quantized layers: pass the QuantConfig that made them")
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        (tmp / "tokenizer.json").write_text(tokenizer.to_str(), encoding="utf-8")
        if chat is not None:
            chat.save(tmp)
        spec = {
            "format": FORMAT, "version": VERSION, "model": model.config.to_dict(),
            "quantization": None if quant is None else {"method": quant.method, "bits": quant.bits,
                                                        "group_size": quant.groups, "layers": layers},
            "tokenizer": "tokenizer.json", "eos_token": EOS,
            "weights": {"file": "model.safetensors", "bytes": (tmp / "model.safetensors").stat().st_size,
                        "sha256": file_sha256(tmp / "model.safetensors")},
            "source": source or {},
        }
        (tmp / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True), encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _field(spec: dict, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in spec:
        raise ValueError(f"{where}: missing field {name!r}")
    value = spec[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: field {name!r} has the wrong type: {value!r}")
    return value


def read_spec(folder: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate `model.json`; every error names the file, the field and the value."""
    path = Path(folder) / SPEC
    where = str(path)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    if spec.get("format") != FORMAT:
        raise ValueError(f"{where}: field 'format' is {spec.get('format')!r}, expected {FORMAT!r}")
    if spec.get("version") != VERSION:
        raise ValueError(f"{where}: field 'version' is {spec.get('version')!r}; this llmbook reads version {VERSION}")
    GPTConfig.from_dict(_field(spec, "model", dict, where), source=f"{where} field 'model'")
    for name in ("tokenizer", "eos_token"):
        _field(spec, name, str, where)
    if Path(spec["tokenizer"]).name != spec["tokenizer"]:
        raise ValueError(f"{where}: field 'tokenizer' must be a file name in the folder, got {spec['tokenizer']!r}")
    weights = _field(spec, "weights", dict, where)
    file = _field(weights, "file", str, f"{where} field 'weights'")
    if Path(file).name != file:
        raise ValueError(f"{where}: field 'weights.file' must be a file name in the folder, got {file!r}")
    _field(weights, "bytes", int, f"{where} field 'weights'")
    _field(weights, "sha256", str, f"{where} field 'weights'")
    quant = spec.get("quantization")
    if quant is not None:
        if not isinstance(quant, dict):
            raise ValueError(f"{where}: field 'quantization' must be an object or null, got {quant!r}")
        method = quant.get("method")
        if method not in METHODS:
            raise ValueError(f"{where}: field 'quantization.method' is {method!r}, not one of {METHODS}")
        group = quant.get("group_size")
        if method.startswith("int8") and group is not None or not method.startswith("int8") and (
                not isinstance(group, int) or isinstance(group, bool) or group <= 0 or group % 2):
            raise ValueError(f"{where}: field 'quantization.group_size' is {group!r}, invalid for method {method!r}")
        bits = quant.get("bits")
        if bits not in ((8,) if method.startswith("int8") else (2, 3, 4)) or isinstance(bits, bool):
            raise ValueError(f"{where}: field 'quantization.bits' is {bits!r}, invalid for method {method!r}")
        layers = quant.get("layers")
        if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"{where}: field 'quantization.layers' must be a list of layer names, got {layers!r}")
    return spec


def _check_quantized(model: GPT, where: str) -> None:
    """Value checks a checksum cannot give: finite positive scales, zero points within the integer range."""
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantLinear):
            continue
        if not torch.isfinite(layer.scale).all() or (layer.scale <= 0).any():
            raise ValueError(f"{where}: tensor {name}.scale has non-finite or non-positive values")
        if hasattr(layer, "zero"):
            top = 2**layer.bits - 1
            if not torch.isfinite(layer.zero).all() or (layer.zero < 0).any() or (layer.zero > top).any() \
                    or (layer.zero != layer.zero.round()).any():
                raise ValueError(f"{where}: tensor {name}.zero has values outside the integers 0..{top}")


def load_folder(folder: str | os.PathLike, device: str = "cpu") -> Servable:
    """Load a folder written by `save_model`, checking spec, checksum, tensor names, shapes, dtypes and ranges."""
    from tokenizers import Tokenizer

    folder = Path(folder)
    spec = read_spec(folder)
    weights = folder / spec["weights"]["file"]
    where = str(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"{where}: missing (named in {folder / SPEC})")
    if weights.stat().st_size != spec["weights"]["bytes"]:
        raise ValueError(f"{where}: {weights.stat().st_size} bytes, {SPEC} says {spec['weights']['bytes']}")
    if file_sha256(weights) != spec["weights"]["sha256"]:
        raise ValueError(f"{where}: fails the sha256 recorded in {SPEC} (modified or corrupted)")
    config = GPTConfig.from_dict(spec["model"], source=f"{folder / SPEC} field 'model'")
    n_params = count_params(config).total  # the model is built in fp32 before its tensors are checked: bound it
    if n_params > 2 * weights.stat().st_size:  # by the file first (no format stores under half a byte per weight)
        raise ValueError(f"{folder / SPEC}: field 'model' describes {n_params:,} parameters, more than "
                         f"{weights.name} ({weights.stat().st_size:,} bytes) can hold")
    with torch.random.fork_rng(devices=[]):
        model = GPT(config)
    quant = spec["quantization"]
    if quant is not None:
        config = QuantConfig(quant["method"], quant["group_size"] or 64, 4 if quant["bits"] == 8 else quant["bits"])
        known = dict(_linears(model, ()))
        for name in quant["layers"]:
            if name not in known:
                raise ValueError(f"{folder / SPEC}: field 'quantization.layers' names {name!r}, not a linear layer")
            lin = known[name]
            _replace(model, name, QuantLinear(lin.in_features, lin.out_features, config.method, config.groups,
                                              lin.bias is not None, config.bits))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{where}: unreadable safetensors file ({err})") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: tensors do not match the architecture: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    for name, t in state.items():
        if t.shape != expected[name].shape or t.dtype != expected[name].dtype:
            raise ValueError(f"{where}: tensor {name} is {t.dtype} {tuple(t.shape)}, expected "
                             f"{expected[name].dtype} {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    _check_quantized(model, where)
    tok_path = folder / spec["tokenizer"]
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as err:  # tokenizers raises a bare Exception for unreadable files
        raise ValueError(f"{tok_path}: not a readable tokenizer.json ({str(err).splitlines()[0]})") from None
    eos = tokenizer.token_to_id(spec["eos_token"])
    if eos is None:
        raise ValueError(f"{folder / SPEC}: field 'eos_token' is {spec['eos_token']!r}, not in the tokenizer")
    if tokenizer.get_vocab_size() > model.config.vocab_size:
        raise ValueError(f"{tok_path}: {tokenizer.get_vocab_size()} tokens, more than the model's "
                         f"vocab_size={model.config.vocab_size}")
    return Servable(model.to(device).eval(), tokenizer, eos, folder.name, {"path": str(folder), **spec},
                    chat_format(folder))


def chat_format(folder: Path) -> Any:
    """The folder's `ChatFormat` when it holds a chat template, else None (a base model)."""
    from llmbook.finetune.chat import TEMPLATE_FILE, ChatFormat

    return ChatFormat.load(folder) if (folder / TEMPLATE_FILE).is_file() else None


def load_servable(path: str | os.PathLike, device: str = "cpu", quantize: str | None = None,
                  group_size: int = 64) -> Servable:
    """A servable folder (`model.json`) or a training run/checkpoint, optionally quantized on load (not GPTQ)."""
    from llmbook.train.checkpoint import CheckpointError
    from llmbook.train.generate import load_model

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model path {p} does not exist")
    if (p / SPEC).is_file():
        served = load_folder(p, device)
    else:
        try:
            model, tokenizer, meta = load_model(p, device=device)
        except CheckpointError as err:
            raise ValueError(f"{p}: {err}") from None
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise ValueError(f"{meta.path / 'tokenizer.json'} has no {EOS} token")
        name = p.name if p.name not in ("checkpoints",) else p.parent.name
        served = Servable(model, tokenizer, eos, name, {"path": str(meta.path), "step": meta.step},
                          chat_format(meta.path))
    if quantize is not None:
        if quantize == "gptq":
            raise ValueError("GPTQ needs calibration data: run `llmbook quantize --method gptq` and serve its output")
        if served.info.get("quantization"):
            raise ValueError(f"{p} is already quantized ({served.info['quantization']['method']})")
        config = QuantConfig(quantize, group_size)
        quantize_model(served.model, config)
        served.info["quantization"] = {"method": quantize, "bits": config.bits, "group_size": config.groups}
    return served

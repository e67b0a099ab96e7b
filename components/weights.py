"""Model directory I/O with Hugging Face BERT parameter names.

Reads `model.safetensors` (or `pytorch_model.bin` via `torch.load(weights_only=True)`) written by
`BertForMaskedLM`, `BertForSequenceClassification`, `BertModel` (no `bert.` prefix, no head) or
bert4ray, and writes `model.safetensors` that `transformers` loads. Everything is checked before
any parameter is assigned, so a failed load leaves nothing half-loaded.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.config import ModelConfig, read_bert4ray_json
from components.io import atomic_directory

log = logging.getLogger(__name__)

# (internal name, Hugging Face name): {i} a layer index, {p} weight|bias, {x} any suffix.
_NAMES = [
    ("embeddings.{x}", "bert.embeddings.{x}"),
    ("layers.{i}.query.{p}", "bert.encoder.layer.{i}.attention.self.query.{p}"),
    ("layers.{i}.key.{p}", "bert.encoder.layer.{i}.attention.self.key.{p}"),
    ("layers.{i}.value.{p}", "bert.encoder.layer.{i}.attention.self.value.{p}"),
    ("layers.{i}.attn_out.{p}", "bert.encoder.layer.{i}.attention.output.dense.{p}"),
    ("layers.{i}.attn_norm.{p}", "bert.encoder.layer.{i}.attention.output.LayerNorm.{p}"),
    ("layers.{i}.ffn_in.{p}", "bert.encoder.layer.{i}.intermediate.dense.{p}"),
    ("layers.{i}.ffn_out.{p}", "bert.encoder.layer.{i}.output.dense.{p}"),
    ("layers.{i}.ffn_norm.{p}", "bert.encoder.layer.{i}.output.LayerNorm.{p}"),
    ("pooler.{p}", "bert.pooler.dense.{p}"),
    ("mlm_transform.{p}", "cls.predictions.transform.dense.{p}"),
    ("mlm_norm.{p}", "cls.predictions.transform.LayerNorm.{p}"),
    ("mlm_bias", "cls.predictions.bias"),
    ("classifier.{p}", "classifier.{p}"),
]
_SLOTS = {"i": r"\d+", "p": "weight|bias", "x": ".+"}
# Heads that a BERT-format checkpoint may lack; they are then newly initialised and reported.
_OPTIONAL = (re.compile(r"pooler\."), re.compile(r"mlm_"), re.compile(r"classifier\."))
# Checkpoint entries that carry nothing bert4ray uses.
_IGNORED = re.compile(r"(.*position_ids$|cls\.seq_relationship\..*|cls\.predictions\.decoder\.(weight|bias)$)")


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w)\}", template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})"
                              for i, p in enumerate(parts)))


_TO_HF = [(_template_regex(a), b) for a, b in _NAMES]
_TO_INTERNAL = [(_template_regex(b), a) for a, b in _NAMES]


def _convert(name: str, table) -> str | None:
    for pattern, template in table:
        m = pattern.fullmatch(name)
        if m:
            return template.format(**m.groupdict())
    return None


def internal_to_hf(name: str) -> str:
    hf = _convert(name, _TO_HF)
    if hf is None:
        raise KeyError(f"no Hugging Face name for parameter '{name}'")
    return hf


def hf_to_internal(name: str) -> str | None:
    """Normalise a checkpoint name (old gamma/beta, BertModel's missing `bert.` prefix) and map it."""
    name = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", name)
    name = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name)
    if name.startswith(("embeddings.", "encoder.", "pooler.")):
        name = "bert." + name
    return _convert(name, _TO_INTERNAL)


def read_state_dict(model_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    st, binf = model_dir / "model.safetensors", model_dir / "pytorch_model.bin"
    if st.is_file():
        try:
            return load_file(str(st)), st
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{st}: cannot read safetensors file ({exc})") from None
    if binf.is_file():
        try:
            return torch.load(str(binf), map_location="cpu", weights_only=True), binf
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds here; all mean "unreadable"
            raise ValueError(f"{binf}: cannot read PyTorch weights ({exc})") from None
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or pytorch_model.bin")


def load_model(cls, model_dir, config: ModelConfig | None = None, report: list[str] | None = None,
               device=None, dtype=None):
    """The model of a directory on `device` (None: the CPU) in `dtype` (None: float32); see
    components.devices for the accepted values."""
    from components.devices import as_device, as_dtype
    device, dtype = as_device(device), as_dtype(dtype)   # checked before any file is read
    from components.locations import is_uri, resolve_model
    if is_uri(model_dir):          # a bucket (or a registered scheme): a cached local copy
        model_dir = resolve_model(model_dir)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory '{model_dir}' does not exist")
    config = config or ModelConfig.load(model_dir)
    raw, path = read_state_dict(model_dir)
    with torch.device("cpu"):          # built and filled on the CPU whatever torch's default device
        model = cls(config)
    expected = model.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in raw.items():
        internal = hf_to_internal(name)
        if internal is None:
            if not _IGNORED.fullmatch(name):
                log.info("%s: ignoring parameter '%s' (not part of a BERT encoder or its heads)", path, name)
            continue
        if internal not in expected:
            if internal.startswith("classifier."):
                raise ValueError(f"{path}: parameter '{name}' belongs to a classifier but the config has "
                                 "num_labels=0")
            continue
        if tuple(tensor.shape) != tuple(expected[internal].shape):
            raise ValueError(f"{path}: parameter '{name}' has shape {tuple(tensor.shape)}, the config "
                             f"expects {tuple(expected[internal].shape)}")
        loaded[internal] = tensor.to(expected[internal].dtype)
    missing = [n for n in expected if n not in loaded]
    fatal = [n for n in missing if not any(p.match(n) for p in _OPTIONAL)]
    if fatal:
        raise ValueError(f"{path}: missing parameter '{internal_to_hf(fatal[0])}'"
                         + (f" and {len(fatal) - 1} more" if len(fatal) > 1 else ""))
    new = [internal_to_hf(n) for n in missing]
    if new:
        log.warning("%s: newly initialised (not in the checkpoint): %s", model_dir, ", ".join(new))
        if report is not None:
            report.extend(new)
    state = dict(expected)
    state.update(loaded)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype)


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the weights file and config.json: the identity of a model directory (indexes
    record it; /v1/models reports it)."""
    import hashlib
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = model_dir / name
        if path.is_file():
            with open(path, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def save_model(model, model_dir, metadata: dict | None = None, lowercase: bool | None = None) -> None:
    """Write the model directory atomically. `metadata` merges into bert4ray.json (task, decoding
    defaults, ...); a vocab.txt already in place (or given as metadata['vocab_file']) is kept, and
    with it go the Hugging Face tokenizer files (`lowercase`: the casing, default the directory's
    tokenizer_config.json, else lowercased), so a re-save also fills them into an older directory."""
    model_dir = Path(model_dir)
    metadata = dict(metadata or {})
    vocab_src = metadata.pop("vocab_file", None)
    previous = read_bert4ray_json(model_dir) if model_dir.is_dir() else {}
    if lowercase is None:
        lowercase = _previous_lowercase(model_dir)
    with atomic_directory(model_dir) as tmp:
        tensors = {internal_to_hf(n): t.detach().to("cpu").contiguous()
                   for n, t in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(model.config.hf_dict(), indent=2, ensure_ascii=False),
                                         encoding="utf-8")
        meta = {k: v for k, v in previous.items() if k != "model"}
        meta.update(metadata)
        meta["format_version"] = 1
        meta["model"] = model.config.bert4ray_dict()
        (tmp / "bert4ray.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
        src = Path(vocab_src) if vocab_src else model_dir / "vocab.txt"
        if src.is_file():
            from components.tokenizer import Tokenizer
            shutil.copyfile(src, tmp / "vocab.txt")
            Tokenizer(tmp / "vocab.txt", lowercase=lowercase).save_pretrained(
                tmp, model_max_length=model.config.max_position_embeddings)


def _previous_lowercase(model_dir: Path) -> bool:
    path = model_dir / "tokenizer_config.json"
    if path.is_file():
        try:
            return bool(json.loads(path.read_text(encoding="utf-8")).get("do_lower_case", True))
        except json.JSONDecodeError:
            log.warning("%s: not valid JSON; the tokenizer files are written lowercased", path)
    return True

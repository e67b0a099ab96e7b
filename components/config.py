"""Model configuration: the Hugging Face BERT `config.json` keys plus bert4ray's own.

`config.json` keeps exactly the Hugging Face keys (so `transformers` loads the directory);
bert4ray's keys (attention kernel, heads) live in `bert4ray.json` beside it.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish")
ATTENTION_KINDS = ("softmax", "linear")
TERMINATION_HEADS = ("none", "st", "nmst")

# Keys Hugging Face writes into BERT config.json that do not change the computation here.
_HF_PASSTHROUGH = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "classifier_dropout", "gradient_checkpointing", "directionality", "pooler_fc_size",
    "pooler_num_attention_heads", "pooler_num_fc_layers", "pooler_size_per_head", "pooler_type",
    "output_past", "is_decoder", "add_cross_attention", "tie_word_embeddings", "bos_token_id",
    "eos_token_id", "problem_type", "output_attentions", "output_hidden_states", "return_dict",
    "chunk_size_feed_forward", "_name_or_path", "_attn_implementation_autoset", "id2label", "label2id",
}


class ConfigError(ValueError):
    """A configuration value is missing, unknown or inconsistent; the message names the key."""


@dataclass
class ModelConfig:
    # --- Hugging Face BERT keys -------------------------------------------------------------
    vocab_size: int = 21128
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    # --- bert4ray keys (bert4ray.json) --------------------------------------------------------
    attention: str = "softmax"
    """Attention kernel: `softmax` (scaled dot product) or `linear` (elu+1 feature map)."""
    num_labels: int = 0
    """Classifier classes; 0 means the model has no classifier head."""
    labels: list[str] = field(default_factory=list)
    """Optional names of the classifier classes, index = class id."""
    termination: str = "none"
    """Output layer for generation: `none` (softmax), `st` (self-terminating) or `nmst`."""
    termination_epsilon: float = 0.1
    """ε of the (non-monotonic) self-terminating layer: p_eos,t >= 1 - (1-ε)^t."""
    eos_token_id: int | None = None
    """Token that ends generation (for BERT vocabularies: [SEP]); needed by ST heads."""
    pooler_activation: str = "tanh"
    """Activation of the pooler over [CLS]: `tanh` (BERT) or `linear` (SimBERT's retrieval vector)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Unused Hugging Face keys, kept so that a round trip does not lose them."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"config key '{name}' must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"config key 'hidden_size' ({self.hidden_size}) must be divisible by "
                f"'num_attention_heads' ({self.num_attention_heads})")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ConfigError(f"config key '{name}' must be in [0, 1), got {value!r}")
        _check_choice("hidden_act", self.hidden_act, ACTIVATIONS)
        _check_choice("attention", self.attention, ATTENTION_KINDS)
        _check_choice("termination", self.termination, TERMINATION_HEADS)
        _check_choice("pooler_activation", self.pooler_activation, ("tanh", "linear"))
        _check_choice("position_embedding_type", self.position_embedding_type, ("absolute",))
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"config key 'pad_token_id' ({self.pad_token_id}) is outside the vocabulary")
        if self.num_labels < 0:
            raise ConfigError(f"config key 'num_labels' must be >= 0, got {self.num_labels}")
        if self.labels and len(self.labels) != self.num_labels:
            raise ConfigError(
                f"config key 'labels' has {len(self.labels)} names but 'num_labels' is {self.num_labels}")
        if self.termination != "none":
            if not 0.0 < self.termination_epsilon < 1.0:
                raise ConfigError(
                    f"config key 'termination_epsilon' must be in (0, 1), got {self.termination_epsilon}")
            if self.eos_token_id is None:
                raise ConfigError("config key 'eos_token_id' is required when 'termination' is not 'none'")
        if self.eos_token_id is not None and not 0 <= self.eos_token_id < self.vocab_size:
            raise ConfigError(f"config key 'eos_token_id' ({self.eos_token_id}) is outside the vocabulary")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    # --- (de)serialisation ------------------------------------------------------------------
    _BERT4RAY_KEYS = ("attention", "num_labels", "labels", "termination", "termination_epsilon",
                      "eos_token_id", "pooler_activation")

    @classmethod
    def from_dict(cls, hf: dict[str, Any], bert4ray: dict[str, Any] | None = None) -> ModelConfig:
        """Build from a `config.json` dict and an optional `bert4ray.json` "model" dict."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in hf.items():
            if key in known:
                kwargs[key] = value
            elif key in _HF_PASSTHROUGH or key.startswith("_"):
                extra[key] = value
            else:
                # Unknown keys from other BERT variants are kept but never silently interpreted.
                extra[key] = value
        if "id2label" in hf and "num_labels" not in kwargs and hf.get("architectures") and any(
                "SequenceClassification" in a for a in hf["architectures"]):
            id2label = {int(k): v for k, v in hf["id2label"].items()}
            kwargs["num_labels"] = len(id2label)
            kwargs["labels"] = [id2label[i] for i in range(len(id2label))]
        for key, value in (bert4ray or {}).items():
            if key not in cls._BERT4RAY_KEYS:
                raise ConfigError(f"unknown key '{key}' in bert4ray.json 'model'{_suggest(key, cls._BERT4RAY_KEYS)}")
            kwargs[key] = value
        return cls(**kwargs, extra=extra)

    def hf_dict(self) -> dict[str, Any]:
        """The `config.json` content: Hugging Face keys only."""
        data = {k: v for k, v in asdict(self).items() if k not in self._BERT4RAY_KEYS and k != "extra"}
        out = dict(self.extra)
        out.update(data)
        out.setdefault("model_type", "bert")
        out["architectures"] = ["BertForSequenceClassification" if self.num_labels else "BertForMaskedLM"]
        if self.num_labels:
            names = self.labels or [f"LABEL_{i}" for i in range(self.num_labels)]
            out["id2label"] = {str(i): n for i, n in enumerate(names)}
            out["label2id"] = {n: i for i, n in enumerate(names)}
        return out

    def bert4ray_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._BERT4RAY_KEYS}

    @classmethod
    def load(cls, model_dir: str | Path) -> ModelConfig:
        model_dir = Path(model_dir)
        path = model_dir / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no config.json in model directory '{model_dir}'")
        try:
            hf = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        meta = read_bert4ray_json(model_dir)
        return cls.from_dict(hf, meta.get("model"))


def read_bert4ray_json(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "bert4ray.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _suggest(value: str, options) -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_choice(key: str, value: Any, options: tuple[str, ...]) -> None:
    if value not in options:
        raise ConfigError(
            f"config key '{key}' has unknown value {value!r}; valid: {', '.join(options)}{_suggest(value, options)}")

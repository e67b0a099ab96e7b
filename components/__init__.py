"""bert4ray components: plain PyTorch building blocks (no Ray, MLflow, DeepSpeed or FastAPI).

The exports load on first use, so that the torch-free modules (e.g. components.decoding.config,
which the HTTP schemas derive from) can be imported without torch."""

from importlib import import_module

_EXPORTS = {"ModelConfig": "components.config", "Transformer": "components.model",
            "TransformerOutput": "components.model", "Tokenizer": "components.tokenizer"}

__all__ = ["ModelConfig", "Transformer", "TransformerOutput", "Tokenizer"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'components' has no attribute {name!r}")

"""bert4ray components: plain PyTorch building blocks (no Ray, MLflow, DeepSpeed or FastAPI)."""

from components.config import ModelConfig
from components.model import Transformer, TransformerOutput
from components.tokenizer import Tokenizer

__all__ = ["ModelConfig", "Transformer", "TransformerOutput", "Tokenizer"]

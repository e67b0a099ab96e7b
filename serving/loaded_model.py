"""What every capability says about the model it loaded: its name (the directory's), its content
fingerprint and its kind, as GET /v1/models and the chat route's system_fingerprint show them."""

from __future__ import annotations

from pathlib import Path


class LoadedModel:
    kind = "model"
    """What sort of model it is, for /v1/models (e.g. "simbert-encoder", "dialogue-lm")."""

    def __init__(self, model_dir: str | Path, kind: str | None = None):
        from components.weights import model_fingerprint  # imports torch: only where a model loads

        self.model_dir = Path(model_dir)
        self.fingerprint = model_fingerprint(self.model_dir)
        if kind is not None:
            self.kind = kind

    @property
    def name(self) -> str:
        return self.model_dir.name

    def info(self) -> dict:
        """The model's entry in /v1/models (subclasses add their own fields)."""
        return {"id": self.name, "fingerprint": self.fingerprint, "kind": self.kind}

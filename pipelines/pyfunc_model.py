"""The MLflow pyfunc model of a bert4ray model directory, logged as "models from code": MLflow keeps
this file (not a pickled object) and runs it to load the model, with `components/` shipped beside
it as code (so it needs only torch, numpy, tokenizers and safetensors; see
pipelines.tracking.log_pyfunc_model). It imports nothing from pipelines.

    model = mlflow.pyfunc.load_model("models:/simbert-tiny/1")
    model.predict(["怎么修改银行卡密码", "明天会下雨吗"])      # (2, H) float32 unit vectors

Signature: input, a list of strings (or a DataFrame whose first column holds them); output, a
float32 array (N, H) of L2-normalised retrieval vectors, the pooled [CLS] as `SimBERT.encode` and
`/v1/embeddings` compute it; for a classify model, (N, num_labels) class probabilities.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

MAX_LENGTH = 64          # SimBERT.encode's and the Serve embeddings route's default


def as_texts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):                  # a pandas DataFrame
        column = "text" if "text" in model_input.columns else model_input.columns[0]
        return [str(t) for t in model_input[column]]
    return [str(t) for t in model_input]


class Bert4rayModel(PythonModel):
    def load_context(self, context):
        from components.simbert import SimBERT
        self.encoder = SimBERT.from_pretrained(context.artifacts["model_dir"], max_length=MAX_LENGTH)

    def predict(self, context, model_input, params=None):
        import torch
        texts = as_texts(model_input)
        model = self.encoder.model
        if model.classifier is None:
            return self.encoder.encode(texts)
        batch = self.encoder.tokenizer.encode_batch(texts, max_length=self.encoder.max_length)
        with torch.no_grad():
            out = model(batch.input_ids, batch.segment_ids, batch.attention_mask, return_logits=False)
        return out.class_logits.softmax(-1).float().numpy()


mlflow.models.set_model(Bert4rayModel())

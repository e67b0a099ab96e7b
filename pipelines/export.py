"""Export a bert4ray model directory in other libraries' layouts (`bert4ray export`).

sentence-transformers: `SentenceTransformer(OUT).encode(texts)` gives `SimBERT.encode(texts)`, the
retrieval vector of bert4ray and of /v1/embeddings, with four modules:

    0  Transformer   BERT (BertModel weights, the tokenizer files, max_seq_length = SimBERT's)
    1  Pooling       the [CLS] token's last hidden state
    2  Dense         bert4ray's pooler: its weight and bias, then tanh (or nothing for SimBERT's
                     `pooler_activation: linear`); CLS pooling alone has no such layer
    3  Normalize     L2 normalisation

The files are written directly (sentence-transformers itself is not needed to export), in the
module layout of sentence-transformers' `models.*` classes, which its releases since 2.x load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import save_file

from components.config import ModelConfig
from components.io import atomic_directory
from components.model import Transformer

FORMATS = ("sentence-transformers",)
DEFAULT_MAX_LENGTH = 64          # SimBERT.encode's and /v1/embeddings' default
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
_ACTIVATIONS = {"tanh": "torch.nn.modules.activation.Tanh", "linear": "torch.nn.modules.linear.Identity"}


def _write_json(path: Path, content) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _check_target(model_dir: Path, out: Path) -> None:
    if out.resolve() == model_dir.resolve():
        raise ValueError(f"the export would replace the model itself: give another directory than '{out}'")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "modules.json").is_file())):
        raise ValueError(f"'{out}' exists and is not an earlier sentence-transformers export: "
                         "give a new directory (it is replaced as a whole)")


def export_sentence_transformers(model_dir: str | Path, out: str | Path,
                                 max_length: int = DEFAULT_MAX_LENGTH) -> Path:
    """Write the sentence-transformers directory `out` (atomically) for `model_dir`; max_length is
    the token limit of `SimBERT.encode` to reproduce (capped at the model's positions)."""
    model_dir, out = Path(model_dir), Path(out)
    config = ModelConfig.load(model_dir)
    if config.attention != "softmax":
        raise ValueError(f"'{model_dir}' uses {config.attention} attention; sentence-transformers runs "
                         "BERT's softmax attention only")
    if not (model_dir / "vocab.txt").is_file():
        raise FileNotFoundError(f"'{model_dir}' has no vocab.txt")
    _check_target(model_dir, out)
    model = Transformer.from_pretrained(model_dir)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    seq_len = min(max_length, config.max_position_embeddings)
    with atomic_directory(out) as tmp:
        # Re-saving writes the tokenizer files even when the source directory predates them.
        model.save_pretrained(tmp / "_full", metadata={"vocab_file": str(model_dir / "vocab.txt")})
        for name in _TOKENIZER_FILES:
            shutil.copyfile(tmp / "_full" / name, tmp / name)
        _write_transformer(tmp, tmp / "_full", config)
        shutil.rmtree(tmp / "_full")
        H = config.hidden_size
        _write_json(tmp / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}])
        _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": seq_len, "do_lower_case": False})
        _write_json(tmp / "config_sentence_transformers.json",
                    {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"})
        _write_json(tmp / "1_Pooling" / "config.json", {
            "word_embedding_dimension": H, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True})
        _write_json(tmp / "2_Dense" / "config.json", {
            "in_features": H, "out_features": H, "bias": True,
            "activation_function": _ACTIVATIONS[config.pooler_activation]})
        save_file({"linear.weight": state["pooler.weight"], "linear.bias": state["pooler.bias"]},
                  str(tmp / "2_Dense" / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "3_Normalize").mkdir()
        card = model_dir / "README.md"
        if card.is_file():
            shutil.copyfile(card, tmp / "README.md")
    return out


def _write_transformer(tmp: Path, full: Path, config: ModelConfig) -> None:
    """config.json and model.safetensors as a plain BertModel: the encoder and pooler under
    BertModel's names, without the MLM / classifier heads that sentence-transformers leaves unused."""
    from safetensors.torch import load_file
    tensors = {name.removeprefix("bert."): t for name, t in load_file(str(full / "model.safetensors")).items()
               if name.startswith("bert.")}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    hf = config.hf_dict()
    hf["architectures"] = ["BertModel"]
    for key in ("id2label", "label2id"):
        hf.pop(key, None)
    _write_json(tmp / "config.json", hf)

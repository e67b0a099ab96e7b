"""`bert4ray export MODEL --format sentence-transformers OUT`: a model in another library's layout.

    bert4ray export bert4ray-runs/quickstart/model --format sentence-transformers st-model
    python -c "from sentence_transformers import SentenceTransformer as S; print(S('st-model').encode(['你好']))"

MODEL is a directory or an MLflow URI (models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH).
"""

from __future__ import annotations

HELP = "export a model for another library: sentence-transformers (vectors equal to SimBERT.encode)"


def add_arguments(parser) -> None:
    parser.add_argument("model", help="model directory or MLflow URI")
    parser.add_argument("out", help="directory to write (replaced atomically)")
    parser.add_argument("--format", required=True, choices=["sentence-transformers"], help="target layout")
    parser.add_argument("--max-length", type=int, default=64,
                        help="tokens per text, as SimBERT.encode and /v1/embeddings cut (default 64)")


def run(args) -> int:
    from pipelines.cli import UserError
    from pipelines.export import export_sentence_transformers
    from pipelines.model_store import resolve_model

    if args.max_length < 4:
        raise UserError(f"--max-length must be at least 4, got {args.max_length}")
    out = export_sentence_transformers(resolve_model(args.model), args.out, max_length=args.max_length)
    print(f"sentence-transformers model -> {out}")
    return 0

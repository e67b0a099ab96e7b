"""`bert4ray index --model DIR --corpus FILE --out DIR`: embed a corpus and build the index."""

from __future__ import annotations

import time

HELP = "embed a corpus (JSON Lines / Parquet) with Ray Data and build the FAISS retrieval index"


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="SimBERT model: a directory or an MLflow URI "
                        "(models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH)")
    parser.add_argument("--corpus", required=True, help="rows {id?, text} or groups {texts: [...]}: a JSON Lines or Parquet file, local "
                        "or in object storage (s3://bucket/key, gs://...)")
    parser.add_argument("--out", required=True, help="index directory to write (replaced atomically), or an object-store prefix "
                        "(uploaded with its completion marker last)")
    parser.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf"],
                        help="exact (flat), HNSW, IVF (for large batched query loads), or auto: "
                             "HNSW from --hnsw-threshold vectors on")
    parser.add_argument("--hnsw-threshold", type=int, default=50_000)
    parser.add_argument("--ef-search", type=int, default=256,
                        help="HNSW candidates per query: higher = better recall, fewer queries/s")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF cells searched per query")
    parser.add_argument("--actors", type=int, default=1, help="embedding actors (one model copy each)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--num-gpus-per-actor", type=float, default=0.0,
                        help="GPUs per embedding actor (0: CPU; 0.5: two actors share a GPU)")


def run(args) -> int:
    from pipelines.indexing import build_index, read_corpus
    from pipelines.model_store import for_actors, resolve_model
    from pipelines.train import init_ray

    if args.num_gpus_per_actor < 0:
        raise ValueError(f"--num-gpus-per-actor must be >= 0, got {args.num_gpus_per_actor}")
    rows = read_corpus(args.corpus)              # fail on a bad file before Ray starts; read once
    model_dir = resolve_model(args.model)        # and on a bad model (a URI is downloaded once)
    init_ray()
    t0 = time.perf_counter()
    index = build_index(model_dir, rows, args.out, kind=args.kind, hnsw_threshold=args.hnsw_threshold,
                        actors=args.actors, max_length=args.max_length, ef_search=args.ef_search,
                        nprobe=args.nprobe, num_gpus_per_actor=args.num_gpus_per_actor,
                        actor_model=for_actors(args.model, model_dir))
    print(f"indexed {len(index)} texts ({index.resolved_kind}, dim {index.dim}) in "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}")
    return 0

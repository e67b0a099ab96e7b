"""bert4ray Ray Serve application: generation, retrieval, embeddings, chat, attribution and parsing
behind one FastAPI ingress. `serve run serving.app:app`, or `bert4ray serve`."""

"""Reranking runs with a cross-encoder: candidates tokenized into the cache, scored on an actor pool."""

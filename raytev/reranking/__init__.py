"""Cross-encoder scoring on Ray actors: a run's candidates tokenized into the cache, parts scored by actors, and a
distillation teacher's scores of the training groups (the `raytev rerank` stage is raytev/workflows/rerank.py)."""

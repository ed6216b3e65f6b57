"""FAISS indexes over embedding shards: build, save and load, search (one index or shard by shard)."""

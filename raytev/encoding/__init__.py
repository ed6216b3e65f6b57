"""Encoding corpora and queries into embedding shards with Ray Data actor pools.

Named `encoding` rather than `encode` so that `raytev.encode(...)`, the Python API, is not shadowed by it.
"""

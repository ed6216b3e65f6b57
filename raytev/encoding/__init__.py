"""Encoding corpora and queries into embedding shards with pools of Ray actors.

Named `encoding` rather than `encode` so that `raytev.encode(...)`, the Python API, is not shadowed by it.
"""

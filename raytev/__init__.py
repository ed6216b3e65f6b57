"""raytev: dense retrieval (Tevatron's train / encode / index / search / evaluate) on Ray."""

__version__ = "0.1.0"

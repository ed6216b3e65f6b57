"""Data formats and validation, readers, the token cache, group sampling, and the Ray Data feed."""

"""Stages made of stages: mining hard negatives, the evaluation pipeline, the demo, and the retrieval they share."""

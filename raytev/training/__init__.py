"""Training on Ray Train: the per-worker loop, checkpoints and resume, and the TorchTrainer set-up.

Named `training` rather than `train` so that `raytev.train(...)`, the Python API, is not shadowed by it.
"""

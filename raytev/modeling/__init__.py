"""Dense retrieval models: pooling, settings, contrastive loss, and the plain and GradCache training steps."""

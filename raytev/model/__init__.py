"""A model folder, whichever backend reads it: what it says about itself, resolved once with the flags into a
ResolvedModel that every loader (torch's DenseModel, JAX's retriever) takes. No torch, no JAX here."""

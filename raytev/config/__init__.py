"""Options: shared sections, each stage's config and the stage registry (no heavy imports: the CLI starts here)."""

"""Plan → Dockerfile text (pure)."""

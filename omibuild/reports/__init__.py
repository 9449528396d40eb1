"""Results as people and tools read them: plans as text, Markdown and JSON (plans)."""

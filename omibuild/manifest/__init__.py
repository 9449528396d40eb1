"""omi.yaml: load (YAML with marks) → validate (schema + semantics) → convert (frozen model)."""

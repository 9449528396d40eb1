"""Executing plans: BuildRequest → Executor. Only engine/buildx.py talks to the engine."""

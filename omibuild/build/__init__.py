"""Executing plans: BuildRequest → Executor. Only build/buildx.py talks to the engine."""

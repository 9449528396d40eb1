"""Manifest + resolved sources → Plan: gathering inputs at the edges (inputs), the pure
planner (plan), and what plan and apply share (pipeline)."""

"""Orchestration: turn a validated RunConfig into a run (distill, train-teacher, demo)."""

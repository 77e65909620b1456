"""Evaluation: pure metrics, runners that write results JSON."""

"""Experiment configs, the runner, and run outputs (plans, tables, reports)."""

"""Fitness functions and the candidate evaluation engine."""

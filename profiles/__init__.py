"""Compressed-variant database, cost table and sensitivity profiles for every (unit, option)."""

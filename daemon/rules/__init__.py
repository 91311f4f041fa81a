"""The pure rule engine: schema, windows, budgets, anomalies, alert lifecycle.

Nothing in this package performs I/O or reads the clock; callers pass `now` in.
"""

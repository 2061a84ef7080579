"""Presenting results: report text/JSON/JUnit, Jacobian rendering, explain."""

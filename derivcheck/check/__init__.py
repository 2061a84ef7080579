"""Checking a layer: targets and conventions, the judge of one call, verify, networks, diagnosis."""

"""The engine: the formula language, rules, exact derivations (concrete, shape-generic, stepped), rounding bounds, the cache."""

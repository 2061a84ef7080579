"""The built-in rule catalog: one TOML file per operation (installed as derivcheck.catalog)."""

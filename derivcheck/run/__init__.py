"""Running checks: worker isolation, configuration, the gate, the command line, the pytest plugin, the Python API."""

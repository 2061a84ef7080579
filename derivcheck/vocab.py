"""derivcheck's vocabulary: the names a user may write, and the defaults, in one place.

Standard library only: the configuration reader (and so the pytest plugin at start-up) imports it.
"""
DTYPES = ("float64", "float32")  # the dtypes a layer is judged in
# what the diagnosis can name (report.py's schema documents each); a catalogue row's `diagnosis` is one of them
DIAGNOSIS_KINDS = ("transposed", "sign-flipped", "constant-factor", "missing-reduction", "wrong-axis", "extra-reduction",
                   "kept-axis", "operand-transposed", "upstream-ignored", "input-instead-of-output", "accumulates",
                   "stale-state", "shape", "forward-wrong", "numerical-stability", "rebinds-grads", "wiring",
                   "regularization", "swapped", "mask-ignored", "mismatched-sizes", "diagonal-only", "epsilon", "mask-inverted",
                   "first-example-only", "weight-decay")
DEFAULT_TIMEOUT = 120.0  # seconds per layer check; --timeout or the config's `timeout` change it
# a run's settings when neither the command line nor the config sets them (timeout None: DEFAULT_TIMEOUT)
DEFAULTS = {"seed": 0, "trials": 5, "steps": 2, "dtypes": ["float64"], "strict": False, "timeout": None}

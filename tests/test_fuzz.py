"""At least 200 malformed targets, rules, options, configurations and cache entries (tests/fuzz.py)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import fuzz  # noqa: E402


@pytest.mark.slow
def test_malformed_input_never_gives_a_traceback_a_hang_an_internal_error_or_a_wrong_verdict(capsys):
    count, problems = fuzz.run_all()
    with capsys.disabled():
        print(f"\nfuzz: {count} malformed cases, {len(problems)} problems")
    assert count >= 200
    assert problems == []


def test_the_fuzz_runner_sees_what_it_must():
    """A case whose expectation is wrong is reported: the runner is not a test that cannot fail."""
    wrong = [fuzz.Case("expects a pass from a missing file", ["verify", "missing.py:X", "--rule", "exp"], exits=(0,)),
             fuzz.Case("wants text that is not there", ["rules"], exits=(0,), want="no such text")]
    count, problems = fuzz.run_all(wrong)
    assert count == 2 and [name for name, _ in problems] == [c.name for c in wrong]

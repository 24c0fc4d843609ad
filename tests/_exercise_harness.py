"""What every test of course_lib.exercises needs: run a check, and what a correct answer prints.

The generic behaviours of all checks (not done yet, an exception, None returned, not a function)
are tested once, for every check, in tests/test_exercises.py (ALL_CHECKS).
"""


def run(check, fn, capsys):
    """Run a check; return (its verdict, everything it printed)."""
    verdict = check(fn)
    captured = capsys.readouterr()
    assert captured.err == ""
    return verdict, captured.out


def assert_correct(check, fn, capsys):
    """A right answer passes with one line that starts with "✅ Correct: "."""
    verdict, out = run(check, fn, capsys)
    assert verdict is True, out
    assert out.startswith("✅ Correct: ")
    assert len(out.strip().splitlines()) == 1

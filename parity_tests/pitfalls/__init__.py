"""The catalogue of porting mistakes: each a named variant of the Flax side built from the
shipped pieces, what it costs (`python -m parity_tests.pitfalls`), and the parity check that
catches it (`parity_tests/test_pitfalls.py`).

The parity tests' own directory goes on `sys.path`, as pytest's rootdir import puts it there, so
that the catalogue imports the suite's helpers and bounds (`parity_helpers`, `test_model`, ...)
under the very module names the suite uses: one copy of each in a pytest session.
"""

import sys
from pathlib import Path

_PARITY_TESTS = str(Path(__file__).resolve().parent.parent)
if _PARITY_TESTS not in sys.path:
    sys.path.insert(0, _PARITY_TESTS)

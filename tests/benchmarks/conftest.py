"""The benchmark scripts are scripts, not a package: put benchmarks/ on sys.path once, as
python does for the script it runs, so that these tests import them (and their sibling
imports, e.g. ``from baseline_watershed import ...``) by module name."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

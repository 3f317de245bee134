import sys
from pathlib import Path

# The benchmarks sample the same real process trees the tests build.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

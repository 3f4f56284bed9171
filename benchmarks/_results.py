"""Where the benchmarks keep their cell caches: benchmarks/results/ (gitignored), wherever they run from."""
from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir(name: str) -> str:
    """The default cache folder of one benchmark, as an argparse default."""
    return str(RESULTS / name)

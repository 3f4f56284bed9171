"""How long `split-steer --help` takes, beside a full import of the package, in fresh processes.

The CLI builds its parser without importing torch, transformers or matplotlib (the package's
attributes load on first use), so help answers in about the interpreter's own start-up time.

    python benchmarks/cli_startup.py [--runs 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python (empty)": [sys.executable, "-c", "pass"],
    "split-steer --help": [sys.executable, "-m", "split_plugin.cli", "--help"],
    "full import": [sys.executable, "-c", "import split_plugin.trainer, split_plugin.analysis.report"],
}


def median_seconds(command: list[str], runs: int) -> float:
    """Median wall time of `runs` fresh processes."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (median reported)")
    args = parser.parse_args()
    seconds = {name: median_seconds(cmd, args.runs) for name, cmd in COMMANDS.items()}
    for name, value in seconds.items():
        print(f"{name:20s} {value:6.2f} s (median of {args.runs})")
    print(f"full import / help: {seconds['full import'] / seconds['split-steer --help']:.1f}x")


if __name__ == "__main__":
    main()

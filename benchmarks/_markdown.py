"""Shared by the benchmark scripts: capture what a run prints and write it into BENCHMARKS.md.

Each script owns one section between `<!-- NAME:begin -->` and `<!-- NAME:end -->`; a rerun
replaces its own section atomically and leaves the rest of the file alone.
"""
from __future__ import annotations

import contextlib
import io
import shlex
import sys
from pathlib import Path
from typing import Iterator

from split_plugin.fileio import atomic_write_text


class _Tee(io.TextIOBase):
    def __init__(self, stream):
        self.stream, self.lines = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.lines.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def captured() -> Iterator[io.StringIO]:
    """Print as usual and keep a copy of everything printed (read it with `.getvalue()`)."""
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        yield tee.lines


def write_section(path: str | Path, name: str, title: str, body: str) -> None:
    """Replace (or append) the section `name` of a Markdown file."""
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = f"{begin}\n{body.strip()}\n{end}"
    if begin in old and end in old:
        new = old[:old.index(begin)] + section + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + f"\n\n## {title}\n\n" + section + "\n"
    atomic_write_text(path, new)


def as_code_block(printed: str) -> str:
    """A run's printed output as a Markdown code block (progress-bar lines dropped)."""
    lines = [line for line in printed.splitlines() if line.strip() and "\r" not in line]
    return "```\n" + "\n".join(lines) + "\n```"


def command(script: str, argv: list[str] | None) -> str:
    """The command line that produced a report, for its "Command:" line."""
    return f"python benchmarks/{script} {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip()


def publish(report: str, markdown: str | None, name: str, title: str) -> None:
    """Print a report and, when `markdown` names a file, write it as that file's section `name`."""
    print(report)
    if markdown:
        write_section(markdown, name, title, report)

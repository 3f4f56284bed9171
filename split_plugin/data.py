"""Contrastive pairs from files: loaders for our and the reference formats, the bundled datasets
and held-out text. The pair type is pairs.py; templating and tokenization are tokenization.py
(their names are re-exported here, so `from split_plugin.data import encode_pairs` still works).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import SplitPluginError
from .pairs import ContrastivePair, _short
from .tokenization import (IGNORE_INDEX, PROMPT_FORMATS, PairBatch, answer_suffix, encode_pairs,  # noqa: F401
                           encode_texts, format_prompt)

__all__ = [
    "ContrastivePair",
    "PairBatch",
    "load_pairs",
    "load_jsonl",
    "load_psychopathy_jsonl",
    "load_powerseeking_csv",
    "load_axbench",
    "list_datasets",
    "load_heldout_text",
    "read_text",
    "format_prompt",
    "answer_suffix",
    "encode_pairs",
    "encode_texts",
]

DATASETS_DIR = Path(__file__).parent / "datasets"
_FORMATS = ("jsonl", "psychopathy", "csv", "parquet")


# --------------------------------------------------------------------------- file readers


def _read_text(path: str | Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); clear errors for missing or binary files."""
    path = Path(path)
    if not path.is_file():
        raise SplitPluginError(f"data file {str(path)!r} does not exist; check the path")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise SplitPluginError(
            f"{path}: line {line} is not valid UTF-8 ({err.reason}); save the file as UTF-8") from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file (e.g. generic text for the KL option), with clear errors for missing or binary files."""
    return _read_text(path)


def _check_columns(found: Iterable[str], expected: Sequence[str], where: str) -> None:
    """Raise if any expected column is missing, listing what was found and what is needed."""
    found = list(found)
    missing = [c for c in expected if c not in found]
    if missing:
        raise SplitPluginError(
            f"{where}: missing column(s) {missing}; found columns {found}, expected {list(expected)}")


def _as_text(value: Any, column: str, where: str) -> str:
    """A cell as a string; a one-element list (some reference files) gives its element."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise SplitPluginError(f"{where}: column {column!r} must hold text, got {_short(repr(value))}")
    return value


def _make_pair(where: str, **fields: Any) -> ContrastivePair:
    """A ContrastivePair whose validation errors name the file and line."""
    try:
        return ContrastivePair(**fields)
    except SplitPluginError as err:
        raise SplitPluginError(f"{where}: {err}") from None


def _nonempty(pairs: list[ContrastivePair], path: str | Path) -> list[ContrastivePair]:
    """The pairs, or an error if the file held none."""
    if not pairs:
        raise SplitPluginError(f"{path}: the dataset is empty; it needs at least one pair")
    return pairs


def _json_records(path: str | Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SplitPluginError(
                f"{path}: line {number} is not valid JSON ({err.msg}); each line must be one JSON object") from None
        except RecursionError:
            raise SplitPluginError(f"{path}: line {number} nests JSON too deeply to read") from None
        if not isinstance(record, dict):
            raise SplitPluginError(f"{path}: line {number} is a JSON {type(record).__name__}, not an object")
        records.append((number, record))
    return records


# --------------------------------------------------------------------------- loaders


_OURS = ("question", "positive", "negative")
_PSYCHOPATHY = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
_POWERSEEKING = ("question", "matching", "not_matching")
_AXBENCH = ("input", "winning_output", "losing_output", "concept_id")


def load_jsonl(path: str | Path) -> list[ContrastivePair]:
    """Our JSONL: `question`, `positive`, `negative`, optional `concept`; other keys -> metadata."""
    pairs = []
    for number, record in _json_records(path):
        where = f"{path}: line {number}"
        _check_columns(record, _OURS, where)
        texts = {k: _as_text(record[k], k, where) for k in _OURS}
        concept = record.get("concept")
        metadata = {k: v for k, v in record.items() if k not in (*_OURS, "concept")}
        pairs.append(_make_pair(where, **texts, concept=concept, metadata=metadata))
    return _nonempty(pairs, path)


def load_psychopathy_jsonl(path: str | Path) -> list[ContrastivePair]:
    """Reference persona JSONL: `answer_matching_behavior` is the positive answer."""
    pairs = []
    for number, record in _json_records(path):
        where = f"{path}: line {number}"
        _check_columns(record, _PSYCHOPATHY, where)
        q, pos, neg = (_as_text(record[k], k, where) for k in _PSYCHOPATHY)
        metadata = {k: v for k, v in record.items() if k not in _PSYCHOPATHY}
        pairs.append(_make_pair(where, question=q, positive=pos, negative=neg, metadata=metadata))
    return _nonempty(pairs, path)


def load_powerseeking_csv(path: str | Path) -> list[ContrastivePair]:
    """Reference CSV with header `question`, `matching` (positive), `not_matching` (negative)."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    try:
        _check_columns(reader.fieldnames or [], _POWERSEEKING, f"{path}: header")
        pairs = [_csv_pair(path, reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise SplitPluginError(f"{path}: line {reader.line_num} is malformed CSV ({err})") from None
    return _nonempty(pairs, path)


def _csv_pair(path: str | Path, line: int, row: dict) -> ContrastivePair:
    """One CSV row as a pair; rows with too many or too few fields are errors."""
    where = f"{path}: line {line}"
    if None in row or any(row.get(c) is None for c in _POWERSEEKING):
        raise SplitPluginError(f"{where}: wrong number of fields; every row needs one value per header column")
    metadata = {k: v for k, v in row.items() if k not in _POWERSEEKING}
    return _make_pair(where, question=row["question"], positive=row["matching"],
                      negative=row["not_matching"], metadata=metadata)


def _read_parquet(path: str | Path):
    """The parquet file as a pandas DataFrame (pandas and pyarrow are optional dependencies)."""
    try:
        import pandas as pd
        import pyarrow  # noqa: F401
    except ImportError:
        raise SplitPluginError("reading parquet files needs pandas and pyarrow: pip install pandas pyarrow") from None
    if not Path(path).is_file():
        raise SplitPluginError(f"data file {str(path)!r} does not exist; check the path")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise SplitPluginError(f"{path}: cannot be read as parquet ({err})") from None


def load_axbench(path: str | Path) -> dict[int, list[ContrastivePair]]:
    """AxBench parquet grouped by `concept_id` (one intervention per concept)."""
    frame = _read_parquet(path)
    _check_columns(frame.columns, _AXBENCH, str(path))
    by_concept: dict[int, list[ContrastivePair]] = {}
    for number, row in enumerate(frame.to_dict("records"), start=1):
        where = f"{path}: row {number}"
        concept = row.get("output_concept")
        pair = _make_pair(where, question=_as_text(row["input"], "input", where),
                          positive=_as_text(row["winning_output"], "winning_output", where),
                          negative=_as_text(row["losing_output"], "losing_output", where),
                          concept=concept if isinstance(concept, str) else None,
                          metadata={k: v for k, v in row.items() if k not in _AXBENCH})
        by_concept.setdefault(_concept_int(row["concept_id"], where), []).append(pair)
    if not by_concept:
        raise SplitPluginError(f"{path}: the dataset is empty; it needs at least one pair")
    return by_concept


def _concept_int(value: Any, where: str) -> int:
    """A concept_id cell as an int."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SplitPluginError(f"{where}: concept_id must be an integer, got {value!r}") from None


def _pick_concept(by_concept: dict[int, list[ContrastivePair]], concept_id: int | None, path) -> list[ContrastivePair]:
    """One concept's pairs; without concept_id the file must hold exactly one concept."""
    ids = sorted(by_concept)
    if concept_id is None:
        if len(ids) > 1:
            raise SplitPluginError(
                f"{path} holds {len(ids)} concepts {ids[:20]}; pass concept_id= to pick one "
                "(or use load_axbench for all)")
        return by_concept[ids[0]]
    if concept_id not in by_concept:
        raise SplitPluginError(f"{path}: no concept_id {concept_id}; the file has {ids[:20]}")
    return by_concept[concept_id]


def _detect_format(path: Path) -> str:
    """jsonl (ours) / psychopathy / csv / parquet, from the extension and, for JSONL, the keys."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".jsonl", ".json", ".ndjson"):
        first = next((line for line in _read_text(path).splitlines() if line.strip()), "{}")
        try:
            keys = json.loads(first)
        except (json.JSONDecodeError, RecursionError):
            return "jsonl"  # the loader reports the bad line with its number
        is_reference = isinstance(keys, dict) and "answer_matching_behavior" in keys and "positive" not in keys
        return "psychopathy" if is_reference else "jsonl"
    raise SplitPluginError(
        f"cannot tell the format of {path.name!r} from its extension; use .jsonl, .csv or .parquet "
        f"or pass format= one of {list(_FORMATS)}")


def list_datasets() -> list[str]:
    """Names of the bundled datasets (folders under split_plugin/datasets with a train.jsonl)."""
    return sorted(p.parent.name for p in DATASETS_DIR.glob("*/train.jsonl"))


def _split_file(folder: Path, split: str) -> Path:
    """`<folder>/<split>.jsonl`, or an error listing the splits the folder holds."""
    splits = sorted(p.stem for p in folder.glob("*.jsonl"))
    if split not in splits:
        raise SplitPluginError(f"dataset {folder.name!r} has no split {split!r}; its splits are {splits}")
    return folder / f"{split}.jsonl"


def _resolve(name_or_path: str | Path, split: str) -> Path:
    """The file a bundled name, a dataset folder or a file path points to."""
    if str(name_or_path) in list_datasets():
        name_or_path = DATASETS_DIR / str(name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        return _split_file(path, split)
    if not path.exists() and (path.suffix or len(path.parts) > 1):
        raise SplitPluginError(f"data file {str(path)!r} does not exist; check the path "
                               f"(or use a bundled dataset: {list_datasets()})")
    if not path.exists():
        raise SplitPluginError(
            f"no bundled dataset or file named {str(name_or_path)!r}; bundled datasets: "
            f"{list_datasets()}, or give the path of a .jsonl, .csv or .parquet file")
    return path


def load_pairs(name_or_path: str | Path, split: str = "train", format: str | None = None,
               concept_id: int | None = None, limit: int | None = None) -> list[ContrastivePair]:
    """Pairs from a bundled dataset name (split = train/test/...) or a file (format auto-detected).

    `split` selects the file `<split>.jsonl` of a bundled dataset or of a folder (train, test, and
    for the persona datasets freetext-train, freetext-test); it is ignored for a single file.
    `concept_id` picks one concept of an AxBench parquet file.
    `limit` keeps the first `limit` pairs.
    """
    path = _resolve(name_or_path, split)
    if format is not None and format not in _FORMATS:
        raise SplitPluginError(f"unknown format {format!r}; use one of {list(_FORMATS)} or None to auto-detect")
    fmt = format or _detect_format(path)
    if concept_id is not None and fmt != "parquet":
        raise SplitPluginError(f"concept_id= only applies to AxBench parquet files, not {fmt} ({path.name})")
    if fmt == "parquet":
        pairs = _pick_concept(load_axbench(path), concept_id, path)
    else:
        pairs = {"jsonl": load_jsonl, "psychopathy": load_psychopathy_jsonl,
                 "csv": load_powerseeking_csv}[fmt](path)
    if limit is not None:
        if not isinstance(limit, int) or limit < 1:
            raise SplitPluginError(f"limit must be a positive integer, got {limit!r}")
        pairs = pairs[:limit]
    return pairs


HELDOUT_PARTS = ("eval", "fit", "all")
HELDOUT_WORDS = 400  # ~550 tokens: what sweeps measure perplexity on by default (2 cores score it quickly)


def load_heldout_text(part: str = "eval", words: int | None = None) -> str:
    """The bundled English prose (written for this project) for perplexity and the KL option.

    The paragraphs split in two halves so that a utility term never trains on the text that
    measures utility: "eval" (the first half: held-out perplexity), "fit" (the second half:
    the default text of `kl_weight`), or "all". `words` keeps the first N words (None: all).
    """
    if part not in HELDOUT_PARTS:
        raise SplitPluginError(f"part must be one of {HELDOUT_PARTS}, got {part!r}")
    if words is not None and (not isinstance(words, int) or isinstance(words, bool) or words < 1):
        raise SplitPluginError(f"words must be a positive integer or None (all), got {words!r}")
    text = _read_text(DATASETS_DIR / "heldout.txt")
    if part != "all":
        paragraphs = [p for p in text.split("\n\n") if p.strip()]
        counts = [len(p.split()) for p in paragraphs]
        half = next(i for i in range(len(counts)) if sum(counts[:i + 1]) >= sum(counts) / 2) + 1
        text = "\n\n".join(paragraphs[:half] if part == "eval" else paragraphs[half:])
    return text if words is None else " ".join(text.split()[:words])



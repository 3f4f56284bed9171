"""Contrastive pairs: loaders for our and the reference formats, bundled datasets, chat
templating and tokenization into batches whose labels mark exactly the answer tokens.

Row layout of every `PairBatch`: row 2i = question i + positive answer i, row 2i+1 = question i
+ negative answer i. Prompt and answer are tokenized separately and concatenated, so the
boundary between them never merges into one token.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from jinja2 import TemplateError

from .errors import SplitPluginError, TemplateRenderError

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
IGNORE_INDEX = -100
_SENTINEL = "\u2063SPLIT_ANSWER_SENTINEL\u2063"
_FORMATS = ("jsonl", "psychopathy", "csv", "parquet")


def _short(text: str, n: int = 60) -> str:
    """The text cut to n characters, for error messages."""
    text = str(text)
    return repr(text if len(text) <= n else text[: n - 3] + "...")


# --------------------------------------------------------------------------- pairs


@dataclass(frozen=True)
class ContrastivePair:
    """A question with a positive answer (shows the concept) and a negative one (its opposite)."""

    question: str
    positive: str
    negative: str
    concept: str | None = None
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("question", "positive", "negative"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SplitPluginError(
                    f"ContrastivePair.{name} must be a non-empty string, got {value!r} "
                    f"(question {_short(self.question)}); fill in the {name} field")
            if not _is_unicode(value):
                raise SplitPluginError(
                    f"ContrastivePair.{name} {_short(value)} holds a lone surrogate (half of an escaped "
                    "emoji or a bad \\ud800-style escape) that no tokenizer accepts; fix the text")
        if self.positive.strip() == self.negative.strip():
            raise SplitPluginError(
                f"positive and negative answers are identical ({_short(self.positive)}) for "
                f"question {_short(self.question)}; a pair needs two different answers")
        if self.concept is not None and not isinstance(self.concept, str):
            raise SplitPluginError(f"ContrastivePair.concept must be a string or None, got {self.concept!r}")


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates (valid JSON escapes, but not encodable text)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def _resolve(name_or_path: str | Path, split: str) -> Path:
    """The file a bundled name, a dataset folder or a file path points to."""
    if str(name_or_path) in list_datasets():
        name_or_path = DATASETS_DIR / str(name_or_path)
    path = Path(name_or_path)
    if path.is_dir():
        if split not in ("train", "test"):
            raise SplitPluginError(f"split must be 'train' or 'test', got {split!r}")
        return path / f"{split}.jsonl"
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
    """Pairs from a bundled dataset name (split = train/test) or a file (format auto-detected).

    `split` selects the file of a bundled dataset or of a folder holding train.jsonl/test.jsonl;
    it is ignored for a single file. `concept_id` picks one concept of an AxBench parquet file.
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


# --------------------------------------------------------------------------- templating
#: how a pair becomes text: "chat" (template, stripped answer, end-of-turn), "plain"
#: (`question + " " + answer`, as EasyEdit scores edits) and "chat_plain" (template + " " + answer,
#: EasyEdit with use_chat_template)
PROMPT_FORMATS = ("chat", "plain", "chat_plain")


def _has_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template rendered to text; a system turn the template rejects joins the user turn."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as err:  # the template itself refused (e.g. "System role not supported")
        if messages[0]["role"] != "system":
            raise TemplateRenderError(f"the tokenizer's chat template failed to render ({err}); "
                                      "fix tokenizer.chat_template or set it to None for plain prompts") from None
        merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(merged + messages[2:], tokenize=False,
                                             add_generation_prompt=add_generation_prompt)


def format_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The prompt the model sees: the chat template with one user turn and the generation prompt.

    Without a chat template the prompt is plain text: `"{question}\\n"`, preceded by
    `"{system_prompt}\\n\\n"` when a system prompt is given. Templates that add a default system
    prompt (SmolLM2 does) keep it unless `system_prompt` replaces it.
    """
    if not _has_template(tokenizer):
        return (f"{system_prompt}\n\n" if system_prompt else "") + f"{question}\n"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return _render(tokenizer, messages, add_generation_prompt=True)


def answer_suffix(tokenizer) -> str:
    """The end-of-turn text that follows an assistant message (e.g. "<|im_end|>" for ChatML).

    Found by rendering a conversation whose assistant message is a sentinel and taking what
    follows it, minus trailing whitespace (the newline that separates turns is not something
    the model must produce). Without a template, or when the template renders nothing after
    the answer, it is the eos token (the model still has to stop), or "" if there is none.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not _has_template(tokenizer):
        return eos
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = _render(tokenizer, messages, add_generation_prompt=False)
    except TemplateRenderError:  # a template that cannot show an assistant turn: the eos ends it
        return eos
    if _SENTINEL not in text:
        return eos
    return text[text.rindex(_SENTINEL) + len(_SENTINEL):].rstrip() or eos


# --------------------------------------------------------------------------- tokenization


@dataclass
class PairBatch:
    """Token rows for pairs: row 2i = question i + positive, row 2i+1 = question i + negative.

    `labels` equals `input_ids` on answer tokens (end-of-turn suffix included) and is -100 on
    prompt and padding; `attention_mask` comes from the row lengths, never from pad ids.
    `len(batch)` is the number of rows (2 x pairs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor
    answer_lengths: torch.Tensor
    padding_side: str = "right"

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_pairs(self) -> int:
        """Number of pairs (half the rows)."""
        return len(self) // 2

    @staticmethod
    def pair_rows(pairs: torch.Tensor, negative: bool) -> torch.Tensor:
        """The rows holding pairs `pairs`' positive (or negative) answer."""
        return 2 * pairs + int(negative)

    @staticmethod
    def split_pairs(per_row: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive rows, negative rows) of a tensor with one entry per row along `dim`."""
        index = [slice(None)] * dim
        return per_row[(*index, slice(0, None, 2))], per_row[(*index, slice(1, None, 2))]

    def to(self, device: torch.device | str) -> "PairBatch":
        """A copy with every tensor on `device`."""
        return replace(self, **{k: getattr(self, k).to(device) for k in _TENSOR_FIELDS})

    def select(self, rows: Sequence[int] | torch.Tensor) -> "PairBatch":
        """A batch of the chosen rows (padding width unchanged)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return replace(self, **{k: getattr(self, k)[index] for k in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("input_ids", "attention_mask", "labels", "prompt_lengths", "answer_lengths")


def _check_tokenizer(tokenizer) -> None:
    """Refuse something that is not a Hugging Face tokenizer (None, the model, a name)."""
    if not callable(tokenizer) or not hasattr(tokenizer, "pad_token_id"):
        raise SplitPluginError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}; "
                               "pass the tokenizer that load_model returns with the model")


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text by default (usually BOS; empty for many)."""
    plain = _ids(tokenizer, ["a"])[0]
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def _with_prefix(prefix: list[int], ids: list[int]) -> list[int]:
    """ids with the special prefix added unless the text (the template) already starts with it."""
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def _pad_id(tokenizer) -> int:
    """The pad id, falling back to eos."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise SplitPluginError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def _padding_side(tokenizer, padding_side: str | None) -> str:
    """The padding side to use (argument, else the tokenizer's), validated."""
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise SplitPluginError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side


def _pad(rows: list[list[int]], masks: list[list[int]], pad_id: int, side: str):
    """(ids, attention mask, labels) tensors from rows and per-token label masks."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention[i, span] = 1
        labels[i, span] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(row, mask)], dtype=torch.long)
    return ids, attention, labels


def _truncate_prompt(prompt: list[int], answers: list[list[int]], max_length: int | None, question: str) -> list[int]:
    """The prompt cut from the left so its longest answer fits in max_length (same cut for both rows)."""
    longest = max(len(a) for a in answers)
    if max_length is None or len(prompt) + longest <= max_length:
        return prompt
    budget = max_length - longest
    if budget < 1:
        raise SplitPluginError(
            f"an answer of {longest} tokens (question {_short(question)}) leaves no room for the prompt "
            f"within max_length={max_length}; raise max_length or shorten the answer")
    return prompt[-budget:]


def encode_pairs(tokenizer, pairs: Sequence[ContrastivePair], max_length: int | None = None,
                 padding_side: str | None = None, system_prompt: str | None = None,
                 prompt_format: str = "chat") -> PairBatch:
    """Tokenize pairs into a PairBatch (prompt and answer tokenized separately, then joined).

    `prompt_format="chat"`: the prompt is `format_prompt(...)` with the tokenizer's own special
    prefix (BOS) added only if the template did not already put it there; the answer is the
    answer text stripped of surrounding whitespace (the model produces "Yes", not " Yes", right
    after the assistant header) plus `answer_suffix(tokenizer)`. "plain" and "chat_plain" are
    EasyEdit's scoring formats (`prompt + " " + answer`, no end-of-turn; the prompt raw or
    through the chat template). With `max_length`, prompts are cut from the left (both rows of
    a pair the same way) and answers are kept whole; at least one prompt token must remain.
    """
    _check_tokenizer(tokenizer)
    if not pairs:
        raise SplitPluginError("encode_pairs got no pairs; pass at least one ContrastivePair")
    if max_length is not None and max_length < 2:
        raise SplitPluginError(f"max_length must be at least 2, got {max_length}")
    if prompt_format not in PROMPT_FORMATS:
        raise SplitPluginError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    side, pad_id = _padding_side(tokenizer, padding_side), _pad_id(tokenizer)
    prefix = _special_prefix(tokenizer)
    if prompt_format == "plain":
        prompts = _ids(tokenizer, [p.question for p in pairs])
    else:
        prompts = _ids(tokenizer, [format_prompt(tokenizer, p.question, system_prompt) for p in pairs])
    texts = [a.strip() for p in pairs for a in (p.positive, p.negative)]
    suffix = answer_suffix(tokenizer) if prompt_format == "chat" else None
    answers = _ids(tokenizer, [a + suffix if suffix is not None else " " + a for a in texts])
    rows, masks, prompt_lengths = [], [], []
    for i, pair in enumerate(pairs):
        pair_answers = answers[2 * i: 2 * i + 2]
        prompt = _truncate_prompt(_with_prefix(prefix, prompts[i]), pair_answers, max_length, pair.question)
        for answer in pair_answers:
            rows.append(prompt + answer)
            masks.append([False] * len(prompt) + [True] * len(answer))
            prompt_lengths.append(len(prompt))
    ids, attention, labels = _pad(rows, masks, pad_id, side)
    return PairBatch(ids, attention, labels, torch.tensor(prompt_lengths, dtype=torch.long),
                     torch.tensor([len(a) for a in answers], dtype=torch.long), side)


def encode_texts(tokenizer, texts: str | Sequence[str], max_length: int = 512,
                 padding_side: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for plain-text perplexity.

    Each text gets the tokenizer's special prefix (BOS, if it adds one) and is cut into
    consecutive windows of at most `max_length` tokens, one row each; labels are the ids on
    real tokens and -100 on padding.
    """
    _check_tokenizer(tokenizer)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SplitPluginError("encode_texts needs one or more non-empty strings")
    if max_length < 2:
        raise SplitPluginError(f"max_length must be at least 2, got {max_length}")
    prefix = _special_prefix(tokenizer)
    rows = []
    for ids in _ids(tokenizer, texts):
        ids = _with_prefix(prefix, ids)
        rows.extend(ids[start:start + max_length] for start in range(0, len(ids), max_length))
    rows = [r for r in rows if len(r) > 1] or rows  # a lone trailing token has nothing to score
    return _pad(rows, [[True] * len(r) for r in rows], _pad_id(tokenizer), _padding_side(tokenizer, padding_side))

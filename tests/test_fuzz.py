"""Fuzzing the loaders: random and garbled JSONL, CSV, YAML and parquet (text and bytes) either load
valid pairs / configs or raise SplitPluginError, never a raw KeyError, TypeError, ValueError, ..."""
from __future__ import annotations

import csv
import io
import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from split_plugin import SplitPluginError
from split_plugin.config import TrainConfig, load_yaml
from split_plugin.data import ContrastivePair, load_pairs

FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FORMATS = [None, "jsonl", "psychopathy", "csv"]
PAIR_KEYS = ["question", "positive", "negative", "concept", "answer_matching_behavior",
             "answer_not_matching_behavior", "matching", "not_matching", "extra"]
CONFIG_KEYS = [f for f in TrainConfig.__dataclass_fields__] + ["learning_rate", "1", ""]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def write(folder, name: str, content: str | bytes):
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode("utf-8", "surrogatepass"))  # lone surrogates too
    return path


def check_pairs(path, **kwargs) -> None:
    """load_pairs gives a non-empty list of valid pairs or one SplitPluginError; nothing else."""
    try:
        pairs = load_pairs(path, **kwargs)
    except SplitPluginError as exc:
        assert str(exc).strip()
        return
    assert pairs and all(isinstance(p, ContrastivePair) for p in pairs)
    for p in pairs:
        assert all(isinstance(t, str) and t.strip() for t in (p.question, p.positive, p.negative))
        assert p.positive.strip() != p.negative.strip()


def check_config(path) -> None:
    """TrainConfig.from_yaml gives a validated config or one SplitPluginError; so does load_yaml."""
    try:
        data = load_yaml(path)
    except SplitPluginError:
        data = None
    else:
        assert isinstance(data, dict)
    try:
        config = TrainConfig.from_yaml(path)
    except SplitPluginError as exc:
        assert str(exc).strip()
        return
    assert data is not None and isinstance(config.layer, int) and config.layer >= 0
    assert config.factors and all(math.isfinite(f) and f > 0 for f in config.factors)
    assert math.isfinite(config.lr) and config.lr >= 0


# -- building blocks --------------------------------------------------------------------------------
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12) | st.sampled_from(
    ["Yes", "No", " ", "", "\t", "a,b", '"q"', "\ufeff", "\u2028", "é", "\x00", "\\ud800", "None"])
leaves = (texts | st.integers(-3, 10 ** 30) | st.floats(allow_nan=True, allow_infinity=True)
          | st.booleans() | st.none())
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(texts, inner, max_size=3), max_leaves=8)
records = st.dictionaries(st.sampled_from(PAIR_KEYS) | texts, json_values, max_size=6)
garbage_text = st.text(max_size=80)  # any code points, lone surrogates included
garbage_bytes = st.binary(max_size=120) | st.sampled_from(
    [b"\xef\xbb\xbf", b"\xff\xfe{\x00}\x00", b"\x00" * 20, b"{" * 1500, b"[" * 3000, b"PAR1" + b"\x00" * 30])


@st.composite
def jsonl_text(draw) -> str:
    """Lines of records (some valid), other JSON values, or garbage, joined by \\n or \\r\\n."""
    valid = st.fixed_dictionaries({"question": texts, "positive": texts, "negative": texts})
    line = (records.map(json.dumps) | valid.map(json.dumps) | json_values.map(json.dumps)
            | garbage_text | st.just(""))
    lines = draw(st.lists(line, max_size=6))
    if draw(st.booleans()) and lines:  # cut the file mid-line, as an interrupted write would
        text = "\n".join(lines)
        return text[: draw(st.integers(0, len(text)))]
    return draw(st.sampled_from(["\n", "\r\n"])).join(lines)


@st.composite
def csv_text(draw) -> str:
    """A header of (mostly) the right columns and rows of random width and content."""
    header = draw(st.lists(st.sampled_from(["question", "matching", "not_matching", "extra"]) | texts,
                           max_size=5))
    rows = draw(st.lists(st.lists(texts, max_size=6), max_size=5))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = out.getvalue()
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text + draw(st.sampled_from(["", '"', "\x00", ",,,\n"]) | garbage_text)


yaml_values = (st.integers(-5, 10 ** 25) | st.floats(allow_nan=True, allow_infinity=True) | texts
               | st.booleans() | st.none() | st.lists(st.floats(allow_nan=True) | texts | st.integers(), max_size=4)
               | st.dictionaries(texts, st.integers(), max_size=2))


@st.composite
def yaml_text(draw) -> str:
    """A YAML mapping of (mostly) real keys to values of any type, garbled YAML, or both."""
    mapping = draw(st.dictionaries(st.sampled_from(CONFIG_KEYS), yaml_values, max_size=6))
    if draw(st.booleans()):
        mapping["layer"] = draw(st.integers(0, 40))
    text = yaml.safe_dump(mapping, allow_unicode=True)
    tricks = st.sampled_from(["", "layer: !!float x\n", "layer: !!int x\n", "x: !!timestamp 2020-99-99\n",
                              "x: !!binary '@@'\n", "? [a]\n: 1\n", "&a x: *a\n", "layer: 1\nlayer: 2\n",
                              "\t- ", "%YAML 9.9\n---\n", "!!python/object:os.system x\n", "1: 2\n",
                              "layer: " + "[" * 2000 + "\n", "factors: [1.0, .nan]\n", "lr: 1e-3\n"])
    extra = draw(tricks) + (draw(garbage_text) if draw(st.booleans()) else "")
    return text + extra if draw(st.booleans()) else extra + text


# -- the tests ----------------------------------------------------------------------------------------
@FUZZ
@given(text=jsonl_text(), name=st.sampled_from(["d.jsonl", "d.json", "d.ndjson"]))
def test_fuzz_jsonl_text(folder, text, name):
    path = write(folder, name, text)
    for fmt in FORMATS:
        check_pairs(path, format=fmt)


@FUZZ
@given(text=csv_text())
def test_fuzz_csv_text(folder, text):
    path = write(folder, "d.csv", text)
    for fmt in (None, "csv", "jsonl"):
        check_pairs(path, format=fmt)


@FUZZ
@given(content=garbage_bytes | jsonl_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
       name=st.sampled_from(["d.jsonl", "d.csv", "d.parquet", "d.yaml", "d.txt"]))
def test_fuzz_bytes_to_every_loader(folder, content, name):
    path = write(folder, name, content)
    if name.endswith(".yaml"):
        check_config(path)
        return
    check_pairs(path)
    for fmt in ("jsonl", "psychopathy", "csv", "parquet"):
        check_pairs(path, format=fmt)


@FUZZ
@given(text=yaml_text())
def test_fuzz_yaml_text(folder, text):
    check_config(write(folder, "h.yaml", text))


@FUZZ
@given(content=garbage_bytes | garbage_text.map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_fuzz_yaml_bytes(folder, content):
    check_config(write(folder, "h.yaml", content))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(st.dictionaries(st.sampled_from(["input", "winning_output", "losing_output", "concept_id",
                                                      "output_concept", "other"]),
                                     st.none() | texts | st.integers(-2, 3), max_size=6),
                     max_size=4))
def test_fuzz_axbench_parquet(folder, rows):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = folder / "ax.parquet"
    frame = pd.DataFrame(rows)
    try:
        frame.to_parquet(path)
    except Exception:  # a column mixing types pyarrow cannot store: not our input to judge
        return
    check_pairs(path)
    if rows:
        check_pairs(path, concept_id=1)

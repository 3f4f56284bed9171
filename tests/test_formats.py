"""Tests for split_plugin.formats: persona re-wording, the training mix and per-format sets."""
from __future__ import annotations

import re
from collections import Counter

import pytest

import split_plugin as sp
from split_plugin.data import load_pairs
from split_plugin.errors import SplitPluginError
from split_plugin.formats import FREE_TEXT, PERSONA_FORMATS, format_sets, reformat, vary_formats
from split_plugin.pairs import ContrastivePair

PERSONA = ["power-seeking", "self-preservation"]


def statement(question: str) -> str:
    """The text between the outer double quotes of a persona question."""
    return re.search(r'"(.+)"', question).group(1)


@pytest.fixture(scope="module")
def persona_test() -> list[ContrastivePair]:
    return load_pairs("power-seeking", split="test")


def test_instructed_reproduces_bundled_questions(persona_test):
    assert [p.question for p in reformat(persona_test, "instructed")] == [p.question for p in persona_test]


@pytest.mark.parametrize("fmt", list(PERSONA_FORMATS))
def test_format_keeps_statement_polarity_and_concept(persona_test, fmt):
    out = reformat(persona_test, fmt)
    assert len(out) == len(persona_test)
    for before, after in zip(persona_test, out):
        assert statement(after.question) == statement(before.question)
        assert (after.positive, after.negative, after.concept) == (before.positive, before.negative, before.concept)
        assert after.metadata["format"] == fmt
    assert "format" not in persona_test[0].metadata  # the input is not changed
    # back to the bundled wording from any format
    assert [p.question for p in reformat(out, "instructed")] == [p.question for p in persona_test]


def test_formats_differ():
    questions = {fmt: template.format(statement="I like it.") for fmt, template in PERSONA_FORMATS.items()}
    assert len(set(questions.values())) == len(questions)
    assert "Answer with only one word" not in questions["bare"]


def test_reformat_rejects_free_text_pairs(persona_test):
    free = load_pairs("optimism", split="test")[:3]
    with pytest.raises(SplitPluginError, match=r"3 of 5 pairs.*pair 2 .*vary_formats"):
        reformat(persona_test[:2] + free, "bare")


def test_unknown_format_lists_names(persona_test):
    with pytest.raises(SplitPluginError, match="'shouty'.*instructed.*bare"):
        reformat(persona_test, "shouty")
    with pytest.raises(SplitPluginError, match="shouty"):
        vary_formats(persona_test, formats=["bare", "shouty"])


def test_vary_formats_deterministic_per_seed():
    pairs = load_pairs("self-preservation")
    freetext = load_pairs("self-preservation", split="freetext-train")
    first = vary_formats(pairs, freetext=freetext, seed=3)
    again = vary_formats(pairs, freetext=freetext, seed=3)
    other = vary_formats(pairs, freetext=freetext, seed=4)
    assert [(p.question, p.metadata["format"]) for p in first] == [(p.question, p.metadata["format"]) for p in again]
    assert [p.question for p in first] != [p.question for p in other]


@pytest.mark.parametrize("share", [0.0, 0.25, 0.1])
def test_vary_formats_balance_and_share(share):
    pairs = load_pairs("power-seeking")
    freetext = load_pairs("power-seeking", split="freetext-train")
    mix = vary_formats(pairs, freetext=freetext, freetext_share=share, seed=1)
    counts = Counter(p.metadata["format"] for p in mix)
    persona_counts = [counts[fmt] for fmt in PERSONA_FORMATS]
    assert len(mix) == len(pairs)
    assert counts[FREE_TEXT] == round(share * len(pairs))
    assert max(persona_counts) - min(persona_counts) <= 1
    assert set(counts) <= set(PERSONA_FORMATS) | {FREE_TEXT}
    free_questions = {p.question for p in freetext}
    assert all((p.question in free_questions) == (p.metadata["format"] == FREE_TEXT) for p in mix)
    persona_statements = [statement(p.question) for p in mix if p.metadata["format"] != FREE_TEXT]
    assert len(set(persona_statements)) == len(persona_statements)  # each statement once, in one format


def test_vary_formats_subset_of_formats():
    mix = vary_formats(load_pairs("power-seeking", split="test"), formats=["bare", "agree"], seed=0)
    assert Counter(p.metadata["format"] for p in mix) == {"bare": 32, "agree": 32}


def test_vary_formats_leaves_free_text_pairs():
    pairs = load_pairs("optimism", split="test")
    mix = vary_formats(pairs, seed=0)
    assert sorted(p.question for p in mix) == sorted(p.question for p in pairs)
    assert all(p.metadata["format"] == FREE_TEXT for p in mix)


def test_vary_formats_errors():
    pairs = load_pairs("power-seeking", split="test")
    freetext = load_pairs("power-seeking", split="freetext-test")
    with pytest.raises(SplitPluginError, match="replaces 32 persona pairs.*24 free-text.*at most 0.37"):
        vary_formats(pairs, freetext=freetext, freetext_share=0.5)
    with pytest.raises(SplitPluginError, match="freetext_share must be"):
        vary_formats(pairs, freetext=freetext, freetext_share=1.0)
    with pytest.raises(SplitPluginError, match="mix concepts.*optimism.*power-seeking"):
        vary_formats(pairs, freetext=load_pairs("optimism", split="test"), freetext_share=0.1)


@pytest.mark.parametrize("name", PERSONA)
def test_freetext_splits(name):
    train = load_pairs(name, split="freetext-train")
    test = load_pairs(name, split="freetext-test")
    assert len(train) >= 50 and len(test) >= 20
    for split in (train, test):
        assert len({p.question.lower() for p in split}) == len(split)
    texts = lambda pairs: {t.lower() for p in pairs for t in (p.question, p.positive, p.negative)}  # noqa: E731
    assert not texts(train) & texts(test)
    for p in train + test:
        assert p.concept == name
        for answer in (p.positive, p.negative):
            assert not re.search(r"\b(Yes|No)\b", answer), answer
        assert 0.7 < len(p.positive) / len(p.negative) < 1.43


def test_missing_split_lists_available():
    with pytest.raises(SplitPluginError, match=r"'optimism' has no split 'freetext-train'.*\['test', 'train'\]"):
        load_pairs("optimism", split="freetext-train")


@pytest.mark.parametrize("name", PERSONA)
def test_format_sets_persona(name):
    sets = format_sets(name, "test")
    assert list(sets) == [*PERSONA_FORMATS, FREE_TEXT]
    assert sets[FREE_TEXT] and all(p.metadata["format"] == FREE_TEXT for p in sets[FREE_TEXT])
    statements = {fmt: [statement(p.question) for p in pairs] for fmt, pairs in sets.items() if fmt != FREE_TEXT}
    assert all(s == statements["instructed"] for s in statements.values())


def test_format_sets_free_text_dataset():
    sets = format_sets("optimism", "train")
    assert list(sets) == [FREE_TEXT] and len(sets[FREE_TEXT]) == len(load_pairs("optimism"))


def test_public_names():
    assert sp.reformat is reformat and sp.vary_formats is vary_formats
    assert sp.format_sets is format_sets and sp.PERSONA_FORMATS is PERSONA_FORMATS

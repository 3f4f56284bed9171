"""Prompt formats of contrastive pairs: one persona statement asked in several wordings, plus free text.

Steering trained on one question wording learns that wording as much as the concept. These
functions re-render the bundled Yes/No persona pairs in other wordings (`reformat`), build a
training mix of wordings and free-text pairs (`vary_formats`) and give per-format evaluation
sets (`format_sets`), so accuracy can be reported for each format.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from .data import load_pairs
from .errors import SplitPluginError
from .pairs import ContrastivePair, _short

#: persona question templates, `{statement}` is the quoted statement; answers stay Yes/No.
#: "instructed" is the bundled datasets' own wording.
PERSONA_FORMATS: Mapping[str, str] = MappingProxyType({
    "instructed": 'Is the following statement something you would say?\n"{statement}"\n'
                  "Answer with only one word: Yes or No.",
    "bare": 'Is the following statement something you would say?\n"{statement}"',
    "agree": 'Do you agree with this statement?\n"{statement}"\nReply Yes or No.',
    "describes": 'Does this describe you: "{statement}"\nAnswer Yes or No.',
    "own-words": 'Could these be your own words?\n"{statement}"\nReply with Yes or No.',
})
FREE_TEXT = "free-text"  #: the `metadata["format"]` of pairs whose answers are sentences
_PERSONA_ANSWERS = {"Yes", "No"}


def _pattern(template: str) -> re.Pattern:
    """A regex that matches the template with any one-line statement and captures it."""
    before, after = template.split("{statement}")
    return re.compile(re.escape(before) + "(.+)" + re.escape(after))


def _statement(pair: ContrastivePair) -> str | None:
    """The quoted statement of a persona pair in any known format, or None for other pairs."""
    if {pair.positive, pair.negative} != _PERSONA_ANSWERS:
        return None
    for template in PERSONA_FORMATS.values():
        match = _pattern(template).fullmatch(pair.question)
        if match:
            return match.group(1)
    return None


def _tagged(pair: ContrastivePair, fmt: str, question: str | None = None) -> ContrastivePair:
    """The pair with `metadata["format"] = fmt` (and a new question if given); the input is left as is."""
    return replace(pair, question=question or pair.question, metadata={**pair.metadata, "format": fmt})


def _check_format(fmt: str) -> None:
    """Raise for a format name that is not in PERSONA_FORMATS, listing the known ones."""
    if fmt not in PERSONA_FORMATS:
        raise SplitPluginError(f"unknown persona format {fmt!r}; known formats: {list(PERSONA_FORMATS)}")


def reformat(pairs: Sequence[ContrastivePair], fmt: str) -> list[ContrastivePair]:
    """The persona pairs asked in format `fmt` (same statement, same Yes/No polarity), tagged with it."""
    _check_format(fmt)
    statements = [_statement(p) for p in pairs]
    bad = [i for i, s in enumerate(statements) if s is None]
    if bad:
        pair = pairs[bad[0]]
        raise SplitPluginError(
            f"{len(bad)} of {len(pairs)} pairs are not Yes/No persona pairs in a known format, the first is "
            f"pair {bad[0]} (question {_short(pair.question)}, answers {_short(pair.positive, 30)}/"
            f"{_short(pair.negative, 30)}); reformat only "
            f"re-words persona pairs such as load_pairs('power-seeking'); mix free-text pairs in with "
            f"vary_formats(pairs, freetext=...) instead")
    template = PERSONA_FORMATS[fmt]
    return [_tagged(p, fmt, template.format(statement=s)) for p, s in zip(pairs, statements)]


def _freetext_count(pairs: Sequence[ContrastivePair], persona: int, freetext: Sequence[ContrastivePair],
                    share: float) -> int:
    """How many of the `persona` persona pairs free-text pairs replace: round(share * len(pairs)), checked."""
    if not 0.0 <= share < 1.0:
        raise SplitPluginError(f"freetext_share must be in [0, 1), got {share!r}")
    count = round(share * len(pairs))
    if count > min(len(freetext), persona):
        raise SplitPluginError(
            f"freetext_share={share} of {len(pairs)} pairs replaces {count} persona pairs by free-text pairs, "
            f"but there are {persona} persona pairs and {len(freetext)} free-text pairs; lower "
            f"freetext_share to at most {math.floor(100 * min(len(freetext), persona) / len(pairs)) / 100} "
            "or pass more pairs")
    concepts = {p.concept for p in [*pairs, *freetext]} - {None}
    if len(concepts) > 1:
        raise SplitPluginError(f"pairs and freetext mix concepts {sorted(concepts)}; "
                               "pass free-text pairs of the same concept")
    return count


def vary_formats(pairs: Sequence[ContrastivePair], formats: Sequence[str] = tuple(PERSONA_FORMATS),
                 freetext: Sequence[ContrastivePair] | None = None, freetext_share: float = 0.25,
                 seed: int = 0) -> list[ContrastivePair]:
    """A seeded mix for training or validation: persona pairs spread evenly over `formats`, and free text.

    Persona pairs are shuffled and given the formats in turn, so format counts differ by at most
    one. With `freetext`, round(freetext_share * len(pairs)) persona pairs are replaced by
    free-text pairs drawn from it, so the mix keeps the size of `pairs`. Pairs that are already
    free text (e.g. optimism) stay as they are. Every pair gets `metadata["format"]`; the result
    is shuffled, and the same for the same seed.
    """
    if not formats:
        raise SplitPluginError(f"formats is empty; pass some of {list(PERSONA_FORMATS)}")
    for fmt in formats:
        _check_format(fmt)
    rng = random.Random(seed)
    persona = [p for p in pairs if _statement(p) is not None]
    mix = [_tagged(p, FREE_TEXT) for p in pairs if _statement(p) is None]
    rng.shuffle(persona)
    if freetext is not None:
        count = _freetext_count(pairs, len(persona), freetext, freetext_share)
        persona = persona[: len(persona) - count]
        mix += [_tagged(p, FREE_TEXT) for p in rng.sample(list(freetext), count)]
    for i, pair in enumerate(persona):
        mix += reformat([pair], formats[i % len(formats)])
    rng.shuffle(mix)
    return mix


def format_sets(name: str | Path, split: str = "test") -> dict[str, list[ContrastivePair]]:
    """Evaluation sets per format of a dataset split: every persona format and "free-text".

    Persona datasets give one set per PERSONA_FORMATS entry (the same statements re-worded) plus
    their `freetext-<split>` pairs; a free-text dataset such as optimism gives {"free-text": ...}.
    """
    pairs = load_pairs(name, split=split)
    if all(_statement(p) is None for p in pairs):
        return {FREE_TEXT: [_tagged(p, FREE_TEXT) for p in pairs]}
    sets = {fmt: reformat(pairs, fmt) for fmt in PERSONA_FORMATS}
    sets[FREE_TEXT] = [_tagged(p, FREE_TEXT) for p in load_pairs(name, split=f"freetext-{split}")]
    return sets

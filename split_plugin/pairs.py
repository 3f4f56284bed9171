"""A contrastive pair: a question with a positive answer (shows the concept) and a negative one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import SplitPluginError


def _short(text: str, n: int = 60) -> str:
    """The text cut to n characters, for error messages."""
    text = str(text)
    return repr(text if len(text) <= n else text[: n - 3] + "...")


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


def check_pairs(pairs: Sequence[ContrastivePair]) -> list[ContrastivePair]:
    """The pairs as a list; an empty set or anything but ContrastivePair objects is refused."""
    if pairs is None or isinstance(pairs, (str, bytes, Mapping)) or not hasattr(pairs, "__iter__"):
        raise SplitPluginError(f"training data must be a list of ContrastivePair objects, got "
                               f"{type(pairs).__name__}; load files with split_plugin.load_pairs")
    pairs = list(pairs)
    if not pairs:
        raise SplitPluginError("the training set is empty; pass at least one ContrastivePair")
    bad = [type(p).__name__ for p in pairs if not isinstance(p, ContrastivePair)]
    if bad:
        raise SplitPluginError(f"training data must be ContrastivePair objects, got {bad[0]}; "
                               "load files with split_plugin.load_pairs")
    return pairs

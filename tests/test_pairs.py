"""ContrastivePair: a malformed pair is refused with one clear SplitPluginError."""
import pytest

from split_plugin import SplitPluginError
from split_plugin.pairs import ContrastivePair


@pytest.mark.parametrize("fields, message", [
    (("q", "", "No"), "ContrastivePair.positive must be a non-empty string"),
    (("q", "Yes", "   "), "ContrastivePair.negative must be a non-empty string"),
    (("q", "Yes", " Yes "), "positive and negative answers are identical"),
    (("q\ud800", "Yes", "No"), "holds a lone surrogate"),   # JSON accepts the escape, tokenizers do not
    ((None, "Yes", "No"), "ContrastivePair.question must be a non-empty string, got None"),
])
def test_bad_pairs(fields, message):
    with pytest.raises(SplitPluginError, match=message):
        ContrastivePair(*fields)

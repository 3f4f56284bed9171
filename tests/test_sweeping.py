"""sweep: a refused intervention or a failing forward leaves the user's model as it was."""
import pytest
from tiny import (FOREIGN, LAYER, PAIRS, assert_intact, boom, randomized, replaced_output, snapshot, tiny_model,
                  tiny_tokenizer, user_model)

from split_plugin import SplitPluginError
from split_plugin.analysis.sweeping import sweep
from split_plugin.pairs import ContrastivePair

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("source, target, form, message", FOREIGN[1:3])
def test_intervention_for_another_model_sweep(source, target, form, message):
    iv = randomized(tiny_model(source), form)
    model = user_model(target)
    snap = snapshot(model)
    with pytest.raises(SplitPluginError, match=message):
        sweep(model, tiny_tokenizer(), iv, PAIRS[:2], [-1.0, 1.0], bootstrap=0, progress=False)
    assert_intact(model, snap)


@pytest.mark.parametrize("at", [LAYER - 1, LAYER + 1])
def test_exception_in_a_sweep_forward_leaves_the_model_intact(at):
    model = user_model()
    snap = snapshot(model)
    iv = randomized(model, "lora")
    with replaced_output(model, at, boom), pytest.raises(RuntimeError, match="boom"):
        sweep(model, tiny_tokenizer(), iv, PAIRS, [-1.0, 1.0], bootstrap=0, progress=False)
    assert_intact(model, snap)


def test_a_bad_pair_in_a_sweep_leaves_the_model_intact():
    model = user_model()
    snap = snapshot(model)
    long = ContrastivePair("q?", "an answer far too long " * 4, "No")
    with pytest.raises(SplitPluginError, match="leaves no room for the prompt"):
        sweep(model, tiny_tokenizer(), randomized(model, "vector"), PAIRS[:3] + [long], [1.0],
              max_length=32, bootstrap=0, progress=False)
    assert_intact(model, snap)

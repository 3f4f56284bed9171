"""The adapter's request format, its metrics on rephrase/locality prompts, its summary in the
host's reporting (install/uninstall over every host namespace) and where it keeps its state."""
from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
import torch

from split_plugin.data import ContrastivePair, encode_pairs
from split_plugin.errors import SplitPluginError
from tiny import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.easyedit
if os.environ.get("SPLIT_PLUGIN_REQUIRE_EASYEDIT") != "1":
    pytest.importorskip("easyeditor", reason="the EasyEdit host is not installed")

import split_plugin.easyedit as se  # noqa: E402
from split_plugin.easyedit import metrics as se_metrics  # noqa: E402
from split_plugin.easyedit._host import _CudaToCpu, outside_cpu_fallback  # noqa: E402

RECORD = {"prompt": "Is the sky green?", "target_new": "Yes", "ground_truth": "No",
          "rephrase_prompt": "Is the sky colored green?",
          "locality": {"nq": {"prompt": ["Say hi", "Say bye"], "ground_truth": ["hi", "bye"]}}}


def test_request_format_follows_the_host_by_default():
    hp = se.SPLITHyperParams(model_name="x/llama-tiny", layer=1)
    assert hp.request_format == "host" and hp.to_train_config().prompt_format == "plain"
    assert se.SPLITHyperParams(model_name="x/llama-tiny", layer=1, use_chat_template=True).prompt_format == "chat_plain"
    assert se.SPLITHyperParams(model_name="x/llama-tiny", layer=1, request_format="chat").prompt_format == "chat"
    with pytest.raises(SplitPluginError, match="request_format must be one of"):
        se.SPLITHyperParams(model_name="x/llama-tiny", layer=1, request_format="raw")


def test_plain_format_scores_the_tokens_the_host_scores():
    tok = tiny_tokenizer()
    pair = ContrastivePair(question="Is the sky green?", positive="Yes", negative="No")
    batch = encode_pairs(tok, [pair], prompt_format="plain")
    whole = tok("Is the sky green? Yes", add_special_tokens=True)["input_ids"]
    prompt = tok("Is the sky green?", add_special_tokens=True)["input_ids"]
    row = batch.input_ids[0][batch.attention_mask[0].bool()].tolist()
    assert row == whole  # prompt + " " + answer, no end-of-turn
    assert batch.input_ids[0][batch.labels[0] != -100].tolist() == whole[len(prompt):]


def test_training_fields_come_from_train_config_and_dtype_is_honoured():
    from dataclasses import fields

    from split_plugin.config import TrainConfig, default_factors

    ours = {f.name for f in fields(se.SPLITHyperParams)}
    assert {"train_batch_size", "train_max_length", "kl_text", "joint_forward"} <= ours
    assert "prompt_format" not in ours and "checkpoint_dir" not in ours
    assert se.SPLITHyperParams(model_name="x/llama", layer=1, form="lora").resolved_factors() == default_factors("lora")
    assert TrainConfig(layer=1).factors == default_factors("vector")
    hp = se.SPLITHyperParams(model_name="x/llama-7b", layer=1, model_dtype="bfloat16")
    assert isinstance(hp.model_name, se.PreloadedModel) and not hp.model_name.loaded  # we load it, in bf16
    with pytest.raises(SplitPluginError, match="set model_loader: auto"):
        se.SPLITHyperParams(model_name="x/llama-7b", layer=1, model_dtype="bfloat16", model_loader="host")


def test_log_odds_on_edit_rephrase_and_locality_prompts():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    out = se.log_odds_metrics(model, tok, RECORD)
    assert set(se.ALL_KEYS) <= set(out)
    assert out["pref_acc"] == float(out["pref_log_odds"] > 0)
    assert out["rephrase_pref_log_odds"] != out["pref_log_odds"]  # another prompt
    assert 0.0 <= out["locality_pref_acc"] <= 1.0 and math.isfinite(out["locality_log_odds"])


def test_summary_metrics_prints_and_saves_our_keys(tmp_path, capsys):
    cases = [{"pre": {"rewrite_acc": [0.0], "pref_log_odds": -1.0}, "post": {"rewrite_acc": [1.0], "pref_log_odds": 2.0,
                                                                               "locality": {"nq_acc": [1.0]}}}]
    means = se.summary_metrics(cases, logs_dir=str(tmp_path / "logs"))
    printed = capsys.readouterr().out
    assert "Metrics Summary" in printed and "pref_log_odds" in printed
    assert means["post"]["pref_log_odds"] == 2.0 and means["post"]["locality.nq_acc"] == 1.0
    assert json.loads((tmp_path / "logs" / "results.json").read_text())[0]["post"]["pref_log_odds"] == 2.0


def test_install_reaches_every_host_namespace_once_and_uninstalls():
    def compute_edit_quality(model, model_name, hparams, tok, record, device, *a, **k):
        return {"rewrite_acc": [1.0]}

    def summary_metrics(all_metrics):
        return "host"

    fakes = [types.ModuleType(f"easyeditor._split_plugin_test_{i}") for i in range(2)]
    for module in fakes:
        module.compute_edit_quality, module.summary_metrics = compute_edit_quality, summary_metrics
        sys.modules[module.__name__] = module
    try:
        assert se_metrics.install() >= 4  # both names in both fakes (and any real host module)
        assert se_metrics.install() == 0  # idempotent
        assert all(m.summary_metrics is fakes[0].summary_metrics for m in fakes)
        assert fakes[0].summary_metrics.__split_plugin_wrapped__ is summary_metrics
        assert fakes[1].compute_edit_quality.__split_plugin_wrapped__ is compute_edit_quality
        se_metrics.uninstall()
        assert fakes[0].summary_metrics is summary_metrics and fakes[1].compute_edit_quality is compute_edit_quality
    finally:
        for module in fakes:
            sys.modules.pop(module.__name__, None)
        se_metrics.install()  # the real host's names back to the wrappers


def test_edits_are_recorded_on_the_model_and_leave_no_trace():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    hp = se.SPLITHyperParams(model_name=(model, tok), layer=1, epochs=1, train_batch_size=2, factors=[1.0],
                             multiplier=1.0)
    _, first = se.apply_split_to_model(model, tok, [RECORD], hp)
    _, second = se.apply_split_to_model(model, tok, [RECORD], hp)
    assert se.active_edits(model) == [first, second]
    assert se.undo_edits(model) == 2 and se.active_edits(model) == []
    assert "_split_plugin_edits" not in model.__dict__


def test_cpu_fallback_is_narrow():
    stack = torch.overrides._get_current_function_mode_stack
    with se.cpu_fallback(force=True) as active:
        assert active and isinstance(stack()[-1], _CudaToCpu)
        with outside_cpu_fallback():
            assert not any(isinstance(m, _CudaToCpu) for m in stack())  # SPLIT trains outside it
        assert isinstance(stack()[-1], _CudaToCpu)
    assert not any(isinstance(m, _CudaToCpu) for m in stack())

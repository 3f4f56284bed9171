"""Sweeps (cached prefix vs naive), log-odds statistics, fits, phases, manifold, reports, CLI."""
import importlib
import json
import math
import os

import numpy as np
import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import Intervention, SplitPluginError, export_peft, import_peft
from split_plugin.analysis import (FitResult, ReferenceCloud, SweepCache, SweepResult, correlate, detect_phases,
                                   fit_curve, fit_curves, manifold_report, sweep, write_report)
from split_plugin.analysis.cli import add_sweep_arguments, parse_multipliers, run_sweep_command
from split_plugin.analysis.fits import evaluate
from split_plugin.analysis.sweeping import raw_logprobs
from split_plugin.data import ContrastivePair
from split_plugin.safety import hooked_modules

HELDOUT = "The river bends twice before it reaches the old mill, and the path follows it. " * 6
PAIRS = [ContrastivePair(f"Would you take charge of group {i}?", "Yes, gladly" + "!" * (i % 3), "No")
         for i in range(5)]
MS = [-2.0, -1.0, 0.0, 1.0, 2.0]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _random_intervention(model, form: str, layer: int = 1, seed: int = 0) -> Intervention:
    intervention = Intervention.for_model(model, form, layer, rank=2)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in intervention.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return intervention


# -- the log-odds scale on fixed numbers -----------------------------------------------------------
def test_log_odds_match_hand_computation_and_count_undefined():
    p_pos = np.array([[0.7, 0.2, 0.01]])
    p_neg = np.array([[0.4, 0.3, 0.02]])   # pair 0: 0.7 + 0.4 >= 1 -> UtilOdds undefined
    result = SweepResult.from_logprobs([0.0], np.log(p_pos), np.log(p_neg), [2, 2, 2], [1, 1, 1],
                                       bootstrap=200)
    pref = result.per_pair("pref_log_odds")[0]
    util = result.per_pair("util_log_odds")[0]
    np.testing.assert_allclose(pref, np.log(p_pos / p_neg)[0], atol=1e-12)
    s = (p_pos + p_neg)[0]
    assert math.isnan(util[0])
    np.testing.assert_allclose(util[1:], np.log(s[1:] / (1 - s[1:])), atol=1e-12)
    row = result.summary()[0]
    assert row["util_undefined"] == 1 and row["util_defined"] == 2
    assert row["util_mean"] == pytest.approx(np.mean(np.log(s[1:] / (1 - s[1:]))))
    assert row["accuracy"] == pytest.approx(1 / 3)   # only pair 0 prefers the positive answer
    assert row["pref_mean"] == pytest.approx(np.mean(np.log(p_pos / p_neg)))
    assert row["pref_mean_ci_low"] <= row["pref_mean"] <= row["pref_mean_ci_high"]
    assert math.isnan(row["perplexity"]) and math.isnan(row["ppl_increase"])


# -- exactness of the cached-prefix sweep ---------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_cached_sweep_equals_naive(arch, form):
    model, tok = tiny_model(arch), tiny_tokenizer()
    intervention = _random_intervention(model, form)
    kwargs = dict(batch_size=2, max_length=64, heldout_text=HELDOUT, bootstrap=0, progress=False)
    fast = sweep(model, tok, intervention, PAIRS, MS, max_rows=8, **kwargs)  # packed: 2 rows x 4 m
    naive = sweep(model, tok, intervention, PAIRS, MS, naive=True, **kwargs)
    assert fast.metadata["packed_pairs"] and not naive.metadata["packed_pairs"]
    assert np.abs(raw_logprobs(fast) - raw_logprobs(naive)).max() < 1e-4
    np.testing.assert_allclose(fast.column("perplexity"), naive.column("perplexity"), rtol=1e-5)
    assert fast.column("ppl_increase")[MS.index(0.0)] == 0.0
    # steering really changes the answers' log-probs, so the comparison is not vacuous
    assert np.abs(raw_logprobs(fast)[0] - raw_logprobs(fast)[2]).max() > 1e-3
    assert hooked_modules(model) == []


def test_pairs_are_batched_by_length_and_scores_come_back_in_input_order(monkeypatch):
    """Batches hold pairs of like length; each pair's scores equal those of the pair swept alone."""
    import split_plugin.analysis.sweeping as sweeping

    model, tok = tiny_model("llama"), tiny_tokenizer()
    pairs = [ContrastivePair(f"Q{i}" + " more words" * (7 * i % 5), "Yes" + "!" * (i % 4), "No") for i in range(7)]
    intervention = _random_intervention(model, "vector")
    batches, encode = [], sweeping.encode_pairs
    monkeypatch.setattr(sweeping, "encode_pairs", lambda tok_, ps, **kw: batches.append(ps) or encode(tok_, ps, **kw))
    together = sweep(model, tok, intervention, pairs, MS, batch_size=3, bootstrap=0, progress=False)

    def packed_length(pair):  # prompt once, both answers
        enc = encode(tok, [pair])
        return int(enc.attention_mask.sum() - enc.prompt_lengths[0])

    swept = [p for b in batches[1:] for p in b]  # batches[0]: the whole list, encoded to order it
    assert swept != pairs and sorted(swept, key=packed_length) == swept
    alone = np.concatenate([raw_logprobs(sweep(model, tok, intervention, [p], MS, bootstrap=0, progress=False))
                            for p in pairs], axis=1)
    assert np.abs(raw_logprobs(together) - alone).max() < 1e-4


def test_packing_falls_back_with_a_warning_when_it_disagrees(monkeypatch):
    sweep_module = importlib.import_module("split_plugin.analysis.sweeping")  # the module, not the function
    real = sweep_module.pack_pairs

    def broken(*args, **kwargs):   # a packing whose mask lets every token see every other
        packed = real(*args, **kwargs)
        packed.attention_mask = torch.zeros_like(packed.attention_mask)
        return packed

    model, tok = tiny_model("llama"), tiny_tokenizer()
    intervention = _random_intervention(model, "vector")
    naive = sweep(model, tok, intervention, PAIRS, MS, naive=True, bootstrap=0, progress=False)
    monkeypatch.setattr(sweep_module, "pack_pairs", broken)
    with pytest.warns(UserWarning, match="scoring unpacked rows"):
        fast = sweep(model, tok, intervention, PAIRS, MS, batch_size=2, bootstrap=0, progress=False)
    assert not fast.metadata["packed_pairs"]
    assert np.abs(raw_logprobs(fast) - raw_logprobs(naive)).max() < 1e-4


def test_sweeps_sharing_a_cache_equal_sweeps_without_one_and_skip_the_shared_passes(monkeypatch):
    sweep_module = importlib.import_module("split_plugin.analysis.sweeping")
    model, tok = tiny_model("llama"), tiny_tokenizer()
    kwargs = dict(batch_size=2, max_length=64, heldout_text=HELDOUT, bootstrap=0, progress=False, max_rows=8)
    edits = [_random_intervention(model, "vector", seed=1), _random_intervention(model, "lora", seed=2),
             _random_intervention(model, "local_weight", layer=2, seed=3)]
    alone = [sweep(model, tok, edit, PAIRS, MS, **kwargs) for edit in edits]
    captures, unsteered_runs = [], []
    real_capture, real_score = sweep_module.capture_prefix, sweep_module.answer_logprobs

    def capture(layout, layer, *args):
        captures.append(layer)
        return real_capture(layout, layer, *args)

    def score(*args, multiplier, **kwargs):
        unsteered_runs.append(bool((torch.as_tensor(multiplier) == 0).any()))
        return real_score(*args, multiplier=multiplier, **kwargs)

    monkeypatch.setattr(sweep_module, "capture_prefix", capture)
    monkeypatch.setattr(sweep_module, "answer_logprobs", score)
    cache = SweepCache()
    shared = []
    for edit in edits:
        captures.clear(), unsteered_runs.clear()
        shared.append(sweep(model, tok, edit, PAIRS, MS, cache=cache, **kwargs))
        if edit is edits[0]:
            assert any(unsteered_runs)                     # the first sweep computes and fills the cache
            first_captures = len(captures)                 # one per batch, one more for the packing check
        else:
            assert not any(unsteered_runs)                 # m = 0 and the packing check reused
            # layer 1's prefixes reused; layer 2 needs its own (no packing check this time)
            assert captures == ([] if edit.layer == 1 else [2] * (first_captures - 1))
    for a, b in zip(alone, shared):
        assert np.abs(raw_logprobs(a) - raw_logprobs(b)).max() < 1e-4
        np.testing.assert_allclose(b.column("perplexity"), a.column("perplexity"), rtol=1e-4)
        assert b.metadata["packed_pairs"]
    assert np.abs(raw_logprobs(shared[0])[-1] - raw_logprobs(shared[1])[-1]).max() > 1e-3  # not vacuous
    with pytest.raises(SplitPluginError, match="one SweepCache per model"):
        sweep(tiny_model("llama"), tok, edits[0], PAIRS, MS, cache=cache, **kwargs)


def test_multiplier_zero_added_and_sorted():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    result = sweep(model, tok, _random_intervention(model, "vector"), PAIRS[:2], [3, -1, 3],
                   bootstrap=0, progress=False)
    assert result.multipliers.tolist() == [-1.0, 0.0, 3.0]
    assert result.metadata["form"] == "vector" and result.metadata["n_pairs"] == 2


def test_sweep_runs_for_a_peft_lora_adapter(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    lora = _random_intervention(model, "lora", layer=2)
    export_peft(lora, model, tmp_path / "adapter")
    from split_plugin.analysis.cli import load_any_intervention
    imported = load_any_intervention(tmp_path / "adapter", model)
    assert imported.form == "lora" and imported.layer == 2
    ours = sweep(model, tok, lora, PAIRS, [-1, 1], bootstrap=0, progress=False)
    theirs = sweep(model, tok, imported, PAIRS, [-1, 1], bootstrap=0, progress=False)
    assert np.abs(raw_logprobs(ours) - raw_logprobs(theirs)).max() < 1e-4
    assert import_peft(tmp_path / "adapter", model).config.rank == 2


# -- restoring the model, and bad input -----------------------------------------------------------
@pytest.mark.parametrize("naive", [False, True])
def test_no_hooks_left_and_mode_restored_after_a_failing_sweep(naive):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.train()
    layers_before = list(model.model.layers)

    def boom(module, args, output):
        raise RuntimeError("boom")

    ours = model.model.norm.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        sweep(model, tok, _random_intervention(model, "lora"), PAIRS, MS, naive=naive, progress=False)
    ours.remove()
    assert hooked_modules(model) == []
    assert list(model.model.layers) == layers_before
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("bad", [[], [float("nan")], [1.0, float("inf")], ["x"], 3.0])
def test_bad_multipliers_are_refused(bad):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(SplitPluginError, match="multiplier"):
        sweep(model, tok, _random_intervention(model, "vector"), PAIRS, bad, progress=False)


def test_empty_pairs_are_refused():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    with pytest.raises(SplitPluginError, match="no pairs"):
        sweep(model, tok, _random_intervention(model, "vector"), [], [1.0], progress=False)


# -- the result object ------------------------------------------------------------------------------
def test_result_round_trips_through_json_and_writes_csv_and_png(tmp_path):
    pos = np.log(np.array([[0.7, 0.2], [0.5, 0.1]]))
    neg = np.log(np.array([[0.4, 0.3], [0.1, 0.05]]))
    result = SweepResult.from_logprobs([0.0, 1.0], pos, neg, [1, 1], [1, 1], perplexity=[5.0, 5.5],
                                       metadata={"form": "vector", "layer": 1}, bootstrap=50)
    result.to_json(tmp_path / "r.json")
    json.loads((tmp_path / "r.json").read_text())  # strict JSON: NaN written as null
    again = SweepResult.from_json(tmp_path / "r.json")
    for a, b in zip(result.summary(), again.summary()):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k]))
    assert again.column("ppl_increase")[1] == pytest.approx(0.1)
    result.to_csv(tmp_path / "t.csv")
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines[0].startswith("multiplier,pair,logp_pos") and len(lines) == 5
    result.plot(tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# -- fits and phases -------------------------------------------------------------------------------
PREF = dict(alpha=1.2, beta=0.3, b=-0.5, m0_positive=0.5, L_positive=8.0, p_positive=0.7,
            m0_negative=-0.3, L_negative=20.0, p_negative=1.2)
UTIL = dict(beta=6.0, b=-8.0, m0_positive=0.2, L_positive=10.0, p_positive=1.0,
            m0_negative=0.0, L_negative=30.0, p_negative=0.8)


def test_fits_recover_known_parameters():
    m = np.arange(-10, 11, 1.0)
    fit = fit_curves(m, evaluate("preference", PREF, m), evaluate("utility", UTIL, m))
    assert fit.ok, (fit.preference.flags, fit.utility.flags)
    assert fit.preference.r2 > 0.99 and fit.utility.r2 > 0.99
    assert min(fit.preference.r2_branch.values()) > 0.99
    grid = np.linspace(-10, 10, 101)
    np.testing.assert_allclose(fit.preference.predict(grid), evaluate("preference", PREF, grid), atol=1e-3)
    np.testing.assert_allclose(fit.utility.predict(grid), evaluate("utility", UTIL, grid), atol=1e-3)
    assert fit.preference.params["alpha"] == pytest.approx(1.2, rel=0.02)
    assert FitResult.from_dict(fit.to_dict()).preference.r2 == fit.preference.r2


def test_fit_on_noise_is_flagged():
    rng = np.random.default_rng(0)
    fit = fit_curve("preference", np.linspace(-10, 10, 41), rng.normal(size=41))
    assert not fit.ok and any("R^2" in f for f in fit.flags)
    few = fit_curve("utility", [-1, 0, 1], [0.0, 1.0, 0.5])
    assert any("underdetermined" in f for f in few.flags)


def test_phases_of_a_saturating_curve_are_ordered():
    phases = detect_phases(lambda m: 5 * np.tanh(m / 3), 10, -10)
    pos, neg = phases["positive"], phases["negative"]
    assert pos["linear"][0] == 0 < pos["linear"][1] == pos["transition"][0]
    assert pos["transition"][1] == pos["convergence"][0] < pos["convergence"][1] == 10
    assert neg["convergence"][0] == -10 < neg["transition"][0] < neg["linear"][0] < neg["linear"][1] == 0
    # the same from a fitted curve (p = 1/2 saturates)
    m = np.arange(-10, 11, 1.0)
    fit = fit_curves(m, 5 * np.tanh(m / 3), -3 + 2 / (1 + m ** 2 / 20))
    p = fit.phases["positive"]
    assert p["linear"][1] <= p["transition"][0] < p["transition"][1] <= p["convergence"][0]


# -- manifold ----------------------------------------------------------------------------------------
def test_off_manifold_distance_zero_inside_subspace_and_grows_orthogonally():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(10, 10, generator=gen))[0]
    inside, outside = basis[:, :3], basis[:, 3]
    centre = torch.randn(10, generator=gen)
    points = centre + torch.randn(500, 3, generator=gen) @ inside.T
    cloud = ReferenceCloud.fit(points, n_components=3)
    x = points[:20]
    assert cloud.off_subspace(x + 2.0 * inside[:, 0]).max() < 1e-4
    d1, d2 = cloud.off_subspace(x + 1.0 * outside), cloud.off_subspace(x + 3.0 * outside)
    torch.testing.assert_close(d1, torch.full((20,), 1.0), atol=1e-4, rtol=0)
    assert (d2 > d1).all()
    assert (cloud.knn_distance(x + 3.0 * outside, k=5) > cloud.knn_distance(x, k=5)).all()


def test_manifold_report_and_correlation():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    report = manifold_report(model, tok, _random_intervention(model, "vector"), PAIRS, [-2, -1, 1, 2],
                             reference_text=HELDOUT, max_length=64, progress=False)
    assert report.metadata["layers"] == [1, 3]
    ms, off = report.series("off_subspace_excess")
    assert ms.tolist() == [-2, -1, 0, 1, 2] and off[2] == 0.0
    assert off[0] > off[1] > 0 and off[4] > off[3] > 0   # grows with |m|
    _, along = report.series("along")
    assert along[0] < 0 < along[4]                         # moves along the CAA direction sign
    assert hooked_modules(model) == []
    c = correlate(off, off ** 2 + 1)
    assert c["spearman_rho"] == pytest.approx(1.0) and c["n"] == 5
    pooled = correlate({"a": [1, 2, 3], "b": [1, 2, 4]}, {"a": [2, 4, 6], "b": [1, 3, 5]})
    assert pooled["n"] == 6 and set(pooled["per_method"]) == {"a", "b"}


# -- the report ---------------------------------------------------------------------------------------
def _two_methods():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    kwargs = dict(batch_size=4, max_length=64, heldout_text=HELDOUT, bootstrap=50, progress=False)
    return model, tok, {name: sweep(model, tok, _random_intervention(model, form, seed=i), PAIRS, MS, **kwargs)
                        for i, (name, form) in enumerate([("SPLIT", "vector"), ("LoRA x/y", "lora")])}


def test_report_writes_all_files(tmp_path):
    model, tok, results = _two_methods()
    manifold = {n: manifold_report(model, tok, _random_intervention(model, f, seed=i), PAIRS, MS,
                                   reference_text=HELDOUT, layers=[1], max_length=64, progress=False)
                for i, (n, f) in enumerate([("SPLIT", "vector"), ("LoRA x/y", "lora")])}
    out = write_report(results, tmp_path / "report", manifold=manifold, title="tiny")
    names = sorted(os.listdir(out))
    for expected in ["report.md", "report.json", "summary.csv", "SPLIT.pairs.csv", "SPLIT.sweep.json",
                     "LoRA_x_y.sweep.json", "log_odds.png", "frontier.png", "accuracy_perplexity.png",
                     "off_manifold.png", "SPLIT.png", "manifold.json"]:
        assert expected in names
    text = (out / "report.md").read_text()
    assert "# tiny" in text and "| m | accuracy" in text and "R²" in text and "highest accuracy" in text
    assert SweepResult.from_json(out / "SPLIT.sweep.json").n_pairs == len(PAIRS)
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + 2 * len(MS)


def _summary_only(ms, acc, ppl_up, util):
    rows = [{"multiplier": m, "accuracy": a, "ppl_increase": p, "util_mean": u, "pref_mean": 0.0}
            for m, a, p, u in zip(ms, acc, ppl_up, util)]
    return SweepResult(table={}, summary_rows=rows)


def test_verdict_picks_with_the_protocols_best_within():
    """Most accurate m >= 0 within +5% perplexity; a more accurate negative m or a costlier m loses."""
    from split_plugin.analysis import verdict

    ms = [-2.0, 0.0, 1.0, 2.0]
    a = _summary_only(ms, [0.95, 0.5, 0.7, 0.9], [0.0, 0.0, 0.03, 0.2], [0.0] * 4)
    b = _summary_only(ms, [0.5, 0.5, 0.6, 0.8], [0.0, 0.0, 0.01, 0.04], [0.0] * 4)
    assert "b (m = 2) reaches the highest accuracy, 80%, vs a 70% (m = 1)" in verdict({"a": a, "b": b})
    nan = [float("nan")] * 4  # no perplexity: the utility fallback, same rule, m >= 0 only
    a, b = _summary_only(ms, [0.95, 0.5, 0.7, 0.9], nan, [0, 0, -0.2, -1.0]), _summary_only(ms, [0.9] * 4, nan, [0] * 4)
    assert "b (m = 0) reaches the highest accuracy, 90%, vs a 70% (m = 1)" in verdict({"a": a, "b": b})


def test_report_failure_leaves_no_temp_dir(tmp_path, monkeypatch):
    _, _, results = _two_methods()
    from split_plugin.analysis import plots

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots, "plot_frontier", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(results, tmp_path / "report")
    assert os.listdir(tmp_path) == []


# -- the command line ---------------------------------------------------------------------------------
def test_parse_multipliers():
    assert parse_multipliers("-8,-4,0,4,8") == [-8, -4, 0, 4, 8]
    assert parse_multipliers("-1:1:0.5") == [-1, -0.5, 0, 0.5, 1]
    for bad in ["", "a,b", "1:0:1", "0:1:0"]:
        with pytest.raises(SplitPluginError):
            parse_multipliers(bad)


def test_sweep_command_end_to_end(tmp_path):
    import argparse
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    _random_intervention(model, "vector").save_pretrained(tmp_path / "vec")
    export_peft(_random_intervention(model, "lora"), model, tmp_path / "peft")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "positive": p.positive,
                                        "negative": p.negative}) + "\n" for p in PAIRS))
    parser = argparse.ArgumentParser()
    add_sweep_arguments(parser)
    args = parser.parse_args(["--intervention", str(tmp_path / "vec"), "--intervention", str(tmp_path / "peft"),
                              "--data", str(data), "--multipliers", "-2,-1,0,1,2", "--out",
                              str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--no-heldout",
                              "--bootstrap", "20", "--no-progress"])
    run_sweep_command(args)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["methods"] == ["vec", "peft"] and "no perplexity measured" in report["verdict"]

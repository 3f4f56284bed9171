"""The benchmark scripts' bookkeeping: budget selection, intervals, and BENCHMARKS.md sections."""
from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _cells  # noqa: E402
import _frontier  # noqa: E402
import _intervals  # noqa: E402
import _markdown  # noqa: E402
import _peer_report  # noqa: E402
import quality  # noqa: E402

from split_plugin.analysis import Evaluation, SweepResult  # noqa: E402
from split_plugin.analysis.protocol import FRONTIER_BUDGETS, evaluate_with  # noqa: E402
from split_plugin.analysis.result import TABLE_COLUMNS  # noqa: E402
from split_plugin.data import ContrastivePair  # noqa: E402


VAL = [ContrastivePair(f"v{i}?", "yes", "no") for i in range(4)]
TEST = [ContrastivePair(f"t{i}?", "yes", "no") for i in range(3)]


def step(*levels):
    """Accuracy as a function of the relative strength s: levels (from s, accuracy), 0.5 below the first."""
    return lambda s: max([0.5] + [a for at, a in levels if s >= at])


def cell(method: str, seed: int, val_acc, test_acc=None, ppl=lambda s: s, ratio=0.01, concept="c") -> Evaluation:
    """A cell in the benchmarks' format, built by the protocol itself from fake curves over s = m * ratio."""
    test_acc = test_acc or val_acc

    def score(pairs, multipliers, text):
        acc = val_acc if pairs is VAL else test_acc
        rows = [{"multiplier": m, "accuracy": acc(m * ratio), "pref_mean": 0.0, "util_mean": 0.0,
                 "ppl_increase": ppl(m * ratio) if text else float("nan")} for m in sorted({0.0, *multipliers})]
        return SweepResult(table={k: [] for k in TABLE_COLUMNS}, summary_rows=rows)  # summary only

    e = evaluate_with(score, ratio, [1.0, 3.0], VAL, {"test": TEST}, "held-out prose", name=method, params=576,
                      train_seconds=2.0)
    e.extra.update(concept=concept, method=method, seed=seed, train_pairs=8, validation_pairs=len(VAL),
                   test_pairs=len(TEST), config={"method": "split", "sub_rows": True, "margin_weight": 1.0,
                                                 "epochs": 2})
    return e


def row_of(text: str, method: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith(f"| {method} |")).split(" | ")


def test_quality_table_reports_the_test_split_at_the_strength_chosen_on_validation():
    # validation prefers the strongest affordable edit, the test split the weakest: the test must not choose
    cells = [cell("SPLIT", s, val_acc=lambda s: 0.5 + s, test_acc=lambda s: 0.9 - s) for s in (0, 1)]
    chosen = max(p.strength for p in cells[0].points if p.strength <= 0.05)  # ppl = s, accuracy rises with s
    assert cells[0].at_budget(0.05)["strength"] == pytest.approx(chosen)
    row = row_of(quality.tables(cells, ["c"], ["SPLIT", "CAA"]), "SPLIT")
    assert row[1:3] == ["2", "576"]
    assert row[4] == f"{0.9 - chosen:.3f} ± 0.000"                      # test accuracy @ +5%
    assert row[6] == f"{chosen:.3g} ± 0" and row[7] == f"{100 * chosen:.1f}% ± 0.0%"
    assert row[8] == f"{0.5 + 0.01:.3f} ± 0.000"                        # validation accuracy at m = 1
    assert row[9] == "3.0% ± 0.0%"                                      # ppl at the top trained m = 3


def test_mean_ci_is_a_t_interval():
    mean, half = _intervals.mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert _intervals.mean_ci([0.4])[0] == 0.4 and _intervals.mean_ci([])[0] != _intervals.mean_ci([])[0]


def test_tables_and_sections(tmp_path):
    cells = [cell("SPLIT", s, step((0.01, 0.8))) for s in (0, 1)]
    text = quality.tables(cells, ["c"], ["SPLIT", "CAA"])
    assert "| SPLIT | 2 | 576 |" in text and "CAA" not in text.split("|---|")[-1]
    assert "unsteered test accuracy 0.500" in text
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro kept\n", encoding="utf-8")
    _markdown.write_section(path, "quality", "Quality", "first")
    _markdown.write_section(path, "speed", "Speed", "fast")
    _markdown.write_section(path, "quality", "Quality", "second")
    text = path.read_text(encoding="utf-8")
    assert "intro kept" in text and "second" in text and "first" not in text and text.count("## Quality") == 1
    assert text.index("second") < text.index("fast")


def test_quality_reading_compares_split_with_caa_and_sft_at_five_percent():
    cells = [cell("SPLIT", s, step((0.01, 0.7 + 0.05 * s))) for s in (0, 1, 2)]
    cells += [cell("CAA", s, step((0.01, 0.6))) for s in (0, 1, 2)]
    text = quality.reading(cells, ["c"], ["CAA", "SPLIT"])
    assert "- c: CAA 0.600 ± 0.000, SPLIT 0.750 ± 0.124." in text
    assert "Best SPLIT variant (on validation): SPLIT; above CAA in the mean, with non-overlapping intervals against CAA." in text
    assert "(b) Held-out perplexity change at the largest multiplier" in text and "SPLIT 3.0% ± 0.0%" in text


def test_cells_resume_from_files_and_deterministic_methods_run_once(tmp_path):
    ran = []

    def run(concept, method, seed):
        ran.append((method, seed))
        return cell(method, seed, step((0.01, 0.8)), concept=concept)

    grid = [(c, m, s) for s in (0, 1) for c in ("c",) for m in ("CAA", "SPLIT")]
    path_of = lambda c, m, s: tmp_path / f"{c}-{m}-{s}.json"  # noqa: E731
    first = _cells.collect(grid, path_of, run, ("CAA",), cached_only=False, desc="t")
    assert ran == [("CAA", 0), ("SPLIT", 0), ("SPLIT", 1)]
    assert [c.extra["seed"] for c in first] == [0, 0, 1, 1] and not (tmp_path / "c-CAA-1.json").exists()
    again = _cells.collect(grid, path_of, run, ("CAA",), cached_only=True, desc="t")
    assert len(ran) == 3 and [c.to_dict() for c in again] == [c.to_dict() for c in first]
    (tmp_path / "c-SPLIT-1.json").unlink()
    assert len(_cells.collect(grid, path_of, run, ("CAA",), cached_only=True, desc="t")) == 3


def test_frontier_figure_plots_the_validation_choices(tmp_path):
    cells = [cell("SPLIT", s, step((0.01, 0.7), (0.05, 0.9))) for s in (0, 1)]
    curves = _frontier.frontier_curves(cells, ["c", "absent"], ["SPLIT", "CAA"])
    assert list(curves) == ["c"] and list(curves["c"]) == ["SPLIT"]
    assert curves["c"]["SPLIT"] == [cells[0].at_budget(b)["accuracy"] for b in FRONTIER_BUDGETS]
    assert curves["c"]["SPLIT"][0] == 0.5 and curves["c"]["SPLIT"][-1] == 0.9
    _frontier.plot_frontier(curves, [(tmp_path / "f.png", 40)])
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and list(tmp_path.iterdir()) == [tmp_path / "f.png"]


def peer_cells(curves: dict) -> list[Evaluation]:
    """Two seeds of cells per method, with the training counts the peers report reads."""
    cells = [cell(m, s, acc) for m, acc in curves.items() for s in (0, 1)]
    for c in cells:
        c.extra["train_sequences"] = 16
    return cells


def test_peers_reading_says_whether_split_beats_every_peer():
    curves = {"SPLIT": step((0.01, 0.78)), "SPLIT-lora": step((0.01, 0.8)), "repeng": step((0.01, 0.8))}
    lines = "\n".join(_peer_report.reading(_peer_report.summarize(peer_cells(curves), list(curves)), 0.5))
    assert "SPLIT (best form: SPLIT-lora, 0.800) does not beat every peer's" in lines  # 0.8 == 0.8
    curves["SPLIT-lora"] = step((0.01, 0.8), (0.03, 0.85))  # 0.03 <= +5%; validation chooses it
    lines = "\n".join(_peer_report.reading(_peer_report.summarize(peer_cells(curves), list(curves)), 0.5))
    assert ("SPLIT (best form: SPLIT-lora, 0.850) beats every peer's test accuracy within +5% perplexity "
            "(repeng, 0.800).") in lines
    assert "- Within +2% perplexity (each side's best on validation): ours SPLIT-lora 0.800, peer repeng 0.800" in lines
    assert "SPLIT-lora over" not in lines  # speed lines compare trained methods with pyreft only


def test_peers_pick_each_sides_best_on_validation_not_on_test():
    # SPLIT is better on validation, SPLIT-lora on test: the summary names SPLIT
    cells = [cell("SPLIT", s, step((0.01, 0.9)), test_acc=step((0.01, 0.6))) for s in (0, 1)]
    cells += [cell("SPLIT-lora", s, step((0.01, 0.7)), test_acc=step((0.01, 0.95))) for s in (0, 1)]
    cells += [cell("repeng", s, step((0.01, 0.8))) for s in (0, 1)]
    for c in cells:
        c.extra["train_sequences"] = 16
    stats = _peer_report.summarize(cells, ["SPLIT", "SPLIT-lora", "repeng"])
    assert _peer_report.best_at(stats, ["SPLIT", "SPLIT-lora"], 0.05) == "SPLIT"


def test_blown_up_perplexity_reads_as_a_factor():
    assert _intervals.fmt(1311.074, 3063.441, pct=True) == "x1,312 (perplexity multiplied; seeds vary)"
    assert _intervals.fmt(3.368, 3.302, pct=True) == "336.8% ± 330.2%"
    assert _intervals.fmt(0.6, 0.1) == "0.600 ± 0.100"
    assert _intervals.fmt(0.00316, 0.0001, sig=True) == "0.00316 ± 0.0001"


def test_peers_section_leads_with_the_summary_and_defines_the_methods():
    import argparse

    curves = {"SPLIT": step((0.01, 0.78)), "SFT": step((0.01, 0.7)), "pyreft-NoReFT": step((0.01, 0.8))}
    cells = peer_cells(curves)
    args = argparse.Namespace(concepts=["c"])
    text, _ = _peer_report.report(args, cells, list(curves), ["--concepts", "c"])
    assert text.index("#### Summary") < text.index("{plot}") < text.index("#### Per concept")
    assert "| c | SPLIT 0.780 ± 0.000 | pyreft-NoReFT 0.800 ± 0.000 | -0.020 |" in text
    assert "SPLIT trails the best peer" in text and "SPLIT-lora** is the SPLIT objective" in text
    assert text.count("pyreft trains one row per pair") == 1 and "split_plugin/analysis/protocol.py" in text
    assert row_of(text, "SPLIT")[2:5] == ["0.780 ± 0.000"] * 3


import memory  # noqa: E402
from split_plugin import Intervention  # noqa: E402
from tiny import tiny_model  # noqa: E402


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_memory_estimate_counts_the_parameters_the_library_trains(form):
    model = tiny_model("llama")
    cfg = model.config
    shape = memory.Shape("tiny", 0, cfg.num_hidden_layers, cfg.hidden_size, 0, cfg.intermediate_size, cfg.vocab_size)
    intervention = Intervention.for_model(model, form, layer=1, rank=4)
    assert memory.trainable(shape, form) == sum(p.numel() for p in intervention.parameters())


def test_memory_estimate_grows_with_the_batch_and_counts_the_vector_forms_cached_layer():
    small, big = (memory.estimate(memory.SHAPES[0], "vector", rows, 128, 100) for rows in (4, 8))
    assert big["activations"] == 2 * small["activations"] and big["weights"] == small["weights"]
    lora = memory.estimate(memory.SHAPES[0], "lora", 4, 128, 100)
    assert memory.estimate(memory.SHAPES[0], "local_weight", 4, 128, 100)["trainable"] > small["trainable"]
    # the vector form keeps layer L's output instead of running layer L: one layer's activations
    # fewer, one more hidden state per cached token
    above = memory.SHAPES[0].layers - memory.SHAPES[0].layers // 2
    assert small["activations"] * above == lora["activations"] * (above - 1)
    assert small["prefix cache"] == 2 * lora["prefix cache"]


import profile_step  # noqa: E402

DIMS = {"vocab": 49152, "intermediate": 1536}


@pytest.mark.parametrize("name, shapes, part", [
    ("aten::mm", [[7, 576], [576, 49152]], "LM head"),
    ("aten::addmm", [[1536], [12, 576], [576, 1536]], "MLP"),
    ("aten::silu", [[12, 1536]], "MLP"),
    ("aten::mm", [[12, 576], [576, 576]], "attention"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", [[1, 9, 40, 64]], "attention"),
    ("aten::cat", [[3, 4]], "data movement"),
    ("aten::rsqrt", [[12, 1]], "norms and element-wise"),
])
def test_profile_buckets_ops_by_name_and_shape(name, shapes, part):
    assert profile_step.bucket(name, shapes, DIMS) == part


def test_peft_lora_baseline_finds_the_down_projection_through_the_layout():
    """train_peft_lora (benchmarks/_cells.py) used to hard-code `model.layers.{L}.mlp.down_proj` (llama only)."""
    from tiny import tiny_model, tiny_tokenizer

    from split_plugin import ContrastivePair, TrainConfig
    from split_plugin.safety import hooked_modules

    model = tiny_model("gpt_neox")
    pairs = [ContrastivePair(f"Q{i}?", f"yes {i}", f"no {i}") for i in range(4)]
    config = TrainConfig(layer=1, form="lora", method="sft", rank=2, epochs=1, batch_size=2, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    iv = _cells.train_peft_lora(model, tiny_tokenizer(), pairs, config)
    assert iv.form == "lora" and iv.layer == 1 and hooked_modules(model) == []
    assert model.state_dict().keys() == before.keys()


def test_claims_compute_verdicts_from_the_cells():
    import claims

    split = [cell("SPLIT", s, step((0.01, 0.8)), ppl=lambda s: s / 10) for s in (0, 1)]
    caa = [cell("CAA", s, step((0.02, 0.6)), ppl=lambda s: 4 * s) for s in (0, 1)]
    lora = [cell("LoRA", s, step((0.01, 0.85)), ppl=lambda s: s / 10) for s in (0, 1)]
    for e in lora:
        e.params = 8448
    text = "\n".join(claims.claim_lines(split + caa + lora, "c"))
    # SPLIT's top trained m = 3 sits at s = 0.03: ppl +0.3% for SPLIT, CAA at s = 0.03 is +12%
    assert "SPLIT, the best SPLIT form here): 0.3% ± 0.0% → holds" in text
    assert "12.0% ± 0.0%, against 0.3% ± 0.0% → holds" in text
    assert "(SPLIT vector − CAA, test accuracy within +5%, 2 seeds): 0.300 ± 0.000 → holds" in text  # CAA: +8% at s = 0.02
    assert "576 vs 8448 parameters; accuracy difference within +5%, 2 seeds): -0.050 ± 0.000 → does not hold" in text
    assert "preference R² n/a" in text and "→ not measured" in text  # flat fake curves: no fit


def test_claims_pick_the_learned_vector_on_validation_not_on_test():
    import claims

    # SPLIT-tuned is better on validation, plain SPLIT on test: the test split must not choose
    tuned = [cell("SPLIT-tuned", s, step((0.01, 0.8)), test_acc=step((0.01, 0.6))) for s in (0, 1)]
    plain = [cell("SPLIT", s, step((0.01, 0.7)), test_acc=step((0.01, 0.9))) for s in (0, 1)]
    caa = [cell("CAA", s, step((0.02, 0.55))) for s in (0, 1)]
    text = "\n".join(claims.claim_lines(tuned + plain + caa, "c"))
    assert "(SPLIT-tuned vector − CAA, test accuracy within +5%, 2 seeds): 0.050 ± 0.000 → does not hold" in text
    assert "(SPLIT-tuned, the best SPLIT form here)" in text


@pytest.mark.parametrize("instructed, gain, kept", [(0.9, 0.2 / 0.4, "50%"),
                                                     (0.5, float("nan"), "n/a (no in-format gain)")])
def test_formats_table_reports_each_format_and_the_bare_gain_kept(instructed, gain, kept):
    import formats

    def score(pairs, multipliers, text):
        level = {"instructed": instructed, "bare": 0.7}.get(getattr(pairs, "name", ""), 0.8)
        rows = [{"multiplier": m, "accuracy": 0.5 if m == 0 else level, "pref_mean": 0.0, "util_mean": 0.0,
                 "ppl_increase": 0.01 * m if text else float("nan")} for m in sorted({0.0, *multipliers})]
        return SweepResult(table={k: [] for k in TABLE_COLUMNS}, summary_rows=rows)

    class Named(list):
        def __init__(self, name):
            super().__init__(TEST)
            self.name = name

    tests = {"instructed": Named("instructed"), "bare": Named("bare")}
    e = evaluate_with(score, 0.01, [1.0], Named("val"), tests, "prose", name="mixed formats")
    e.extra.update(concept="c", training="mixed formats", seed=0)
    assert formats.gain_kept(e, "bare") == pytest.approx(gain, nan_ok=True)
    table = "\n".join(formats.table([e]))
    assert f"| c | mixed formats | 1 | {instructed:.3f} | 0.700 | {kept} |" in table
    assert "| c | (unsteered) | | 0.500 | 0.500 | |" in table


def test_peers_read_our_cells_under_the_quality_grids_file_names(tmp_path):
    import peers

    qargs = peers.quality_args(SimpleNamespace(train_pairs=96, test_pairs=None))
    reft = SimpleNamespace(rank=4, epochs=2, lr=4e-3, batch_size=4)
    path_of = peers.cell_paths(qargs, reft, tmp_path / "peers", tmp_path / "quality")
    assert path_of("optimism", "SPLIT-tuned", 1) == _cells.cell_path(qargs, tmp_path / "quality")("optimism", "SPLIT-tuned", 1)
    assert path_of("optimism", "pyreft-NoReFT", 1).parent == tmp_path / "peers"


import tune  # noqa: E402


def test_tune_runs_only_the_named_candidates_and_rejects_unknown_names():
    names = [name for name, _ in tune.searched("split-lora", ["alpha 32, margin 2", "alpha 32"])]
    assert names == ["alpha 32", "alpha 32, margin 2"]  # search order, not the order given
    assert len(tune.searched("split-lora", None)) == len(tune.SEARCH["split-lora"])
    tune.check_candidates(["split-lora", "split-vector"], ["alpha 32", "lr 0.02"])
    with pytest.raises(SystemExit, match=r"'alpha 33'.*choose from"):
        tune.check_candidates(["split-lora"], ["alpha 32", "alpha 33"])


def test_tune_does_not_choose_a_recipe_that_fails_on_one_seed():
    # tune names each cell by its concept
    steady = [cell(c, s, step((0.01, 0.7))) for s in (0, 1) for c in ("a", "b")]
    flaky = [cell(c, s, step((0.01, 0.95 if s or c == "a" else 0.5))) for s in (0, 1) for c in ("a", "b")]
    rows = [("steady", tune.summarize(steady)), ("flaky", tune.summarize(flaky))]
    assert rows[1][1]["val_acc"] > rows[0][1]["val_acc"] and rows[1][1]["no_gain"] == 1
    assert rows[1][1]["per_concept"] == {"a": 0.95, "b": pytest.approx(0.725)}  # mean over seeds, not the last
    assert tune.pick(rows) == "steady"
    assert tune.pick(rows[1:]) == "flaky"  # when every candidate fails somewhere: the best mean


def test_peer_speed_alternates_methods_and_compares_medians(monkeypatch):
    import _peer_speed

    calls = []
    scripted = {"SPLIT": iter([3.0, 1.0, 2.0]), "pyreft-NoReFT": iter([4.0, 4.0, 5.0])}
    monkeypatch.setattr(_peer_speed, "trainer", lambda method, *_: (method, 2))

    def fake_timed(method, pairs):  # `run` is the method's name here
        calls.append((method, len(pairs)))
        return next(scripted[method]) if len(pairs) > _peer_speed.WARMUP_PAIRS else 99.0

    monkeypatch.setattr(_peer_speed, "_timed", fake_timed)
    stats = _peer_speed.measure(["SPLIT", "pyreft-NoReFT"], list(range(20)), 0, None, None, repeats=3,
                                log=lambda *_: None)
    # one untimed warm-up on the first pairs each, then the order flips every repeat
    assert calls[:2] == [("SPLIT", 8), ("pyreft-NoReFT", 8)]
    assert [m for m, _ in calls[2:]] == ["SPLIT", "pyreft-NoReFT", "pyreft-NoReFT", "SPLIT", "SPLIT",
                                         "pyreft-NoReFT"]
    assert stats["SPLIT"]["seconds"] == [3.0, 1.0, 2.0]  # the warm-up is not counted
    assert stats["SPLIT"]["median"] == 2.0 and stats["pyreft-NoReFT"]["median"] == 4.0
    assert stats["SPLIT"]["pairs_per_s"] == pytest.approx(10.0)
    text = _peer_speed.report(stats, 20, "c", 0, 3)
    assert "- SPLIT pairs/s over 2.00x pyreft-NoReFT" in text
    assert "| SPLIT | 2 | 2.0 | 3.0, 1.0, 2.0 | 10.00 | 20.00 |" in text


def test_peer_speed_reports_the_answer_lengths_that_set_the_cost():
    import _peer_speed
    from split_plugin.pairs import ContrastivePair

    def words(text, add_special_tokens):
        return {"input_ids": text.split()}
    pairs = [ContrastivePair("q", "a b c", "d", "c"), ContrastivePair("q", "a", "d e f g h", "c")]
    assert _peer_speed.answer_tokens(words, pairs) == (2.0, 3.0)
    stats = {"SPLIT": {"seconds": [1.0], "median": 1.0, "epochs": 2, "pairs_per_s": 2.0}}
    assert "2 c training pairs (answers: 2.0 positive, 3.0 negative tokens on average)" in _peer_speed.report(
        stats, 2, "c", 0, 1, tokens=(2.0, 3.0))


@pytest.mark.parametrize("form, lr", [("vector", 0.08), ("lora", 0.01)])
def test_train_speed_one_step_shows_the_variants_compute_the_same_step(form, lr, capsys):
    import train_speed
    from tiny import tiny_model, tiny_tokenizer

    pairs = [ContrastivePair(f"question number {i}?", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes")
             for i in range(4)]
    base = dict(layer=2, method="split", form=form, epochs=1, batch_size=4, lr=lr, progress=False,
                factors=[2.0, 4.0])
    train_speed.one_step(tiny_model("llama"), tiny_tokenizer(), pairs, base)
    line = capsys.readouterr().out
    loss_share, grad_share = (float(line.split(w)[0].split()[-1]) for w in (" of the loss", " of the largest"))
    # fp32 rounding on a tiny random model: about 1e-5 of the largest component; a wrong step is ~1e-1
    assert 0 <= loss_share < 1e-4 and 0 <= grad_share < 1e-4

"""The benchmark scripts' bookkeeping: budget selection, intervals, and BENCHMARKS.md sections."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _markdown  # noqa: E402
import quality  # noqa: E402


def cell(method: str, seed: int, accuracies, ppl) -> dict:
    rows = [{"strength": s, "multiplier": s * 10, "accuracy": a, "pref": 0.0, "util": 0.0, "ppl_increase": p}
            for s, a, p in zip(quality.STRENGTHS, accuracies, ppl)]
    return {"concept": "c", "method": method, "seed": seed, "split": "test", "eval_pairs": 4,
            "train_seconds": 1.0, "params": 576, "rows": rows}


def test_budget_picks_the_strongest_strength_within_it_not_the_best_accuracy():
    ppl = [0.0, 0.01, 0.03, 0.04, 0.09, 0.2, 0.6]
    acc = [0.5, 0.9, 0.6, 0.55, 0.7, 0.8, 0.9]  # the 0.9 at +1% must not be cherry-picked
    c = cell("SPLIT", 0, acc, ppl)
    assert quality.at_budget(c, 0.05)["strength"] == 0.1 and quality.at_budget(c, 0.05)["accuracy"] == 0.55
    assert quality.at_budget(c, 0.02)["accuracy"] == 0.9
    assert quality.at_budget(cell("X", 0, acc, [0.0] + [0.5] * 6), 0.02)["strength"] == 0.0


def test_mean_ci_is_a_t_interval():
    mean, half = quality.mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-5)
    assert quality.mean_ci([0.4])[0] == 0.4 and quality.mean_ci([])[0] != quality.mean_ci([])[0]


def test_tables_and_sections(tmp_path):
    cells = [cell("SPLIT", s, [0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.9], [0, .01, .02, .04, .08, .2, 1.0]) for s in (0, 1)]
    text = quality.tables(cells, ["c"], ["SPLIT", "CAA"])
    assert "| SPLIT | 2 | 576 |" in text and "CAA" not in text.split("|---|")[-1]
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nintro kept\n", encoding="utf-8")
    _markdown.write_section(path, "quality", "Quality", "first")
    _markdown.write_section(path, "speed", "Speed", "fast")
    _markdown.write_section(path, "quality", "Quality", "second")
    text = path.read_text(encoding="utf-8")
    assert "intro kept" in text and "second" in text and "first" not in text and text.count("## Quality") == 1
    assert text.index("second") < text.index("fast")


def peer_cells(curve: dict, ppl: list) -> list[dict]:
    """Two seeds of cells per method, with the training counts the peers report reads."""
    return [{**cell(m, s, acc, ppl), "train_pairs": 8, "train_sequences": 16}
            for m, acc in curve.items() for s in (0, 1)]


def test_peers_reading_says_whether_split_beats_every_peer():
    import peers

    curve = {"SPLIT": [0.5, 0.6, 0.7, 0.78, 0.8, 0.8, 0.9], "SPLIT-lora": [0.5, 0.7, 0.75, 0.8, 0.8, 0.8, 0.9],
             "repeng": [0.5, 0.6, 0.72, 0.8, 0.8, 0.8, 0.9]}
    ppl = [0, .01, .02, .04, .08, .2, 1.0]
    cells = peer_cells(curve, ppl)
    stats = peers.summarize(cells, list(curve))
    lines = "\n".join(peers.reading(stats, 0.5))
    assert "SPLIT (best form: SPLIT-lora, 0.800) does not beat every peer's best" in lines  # 0.8 == 0.8
    curve["SPLIT-lora"][3] = 0.85
    cells = peer_cells(curve, ppl)
    lines = "\n".join(peers.reading(peers.summarize(cells, list(curve)), 0.5))
    assert "SPLIT (best form: SPLIT-lora, 0.850) beats every peer's best accuracy within +5% perplexity (repeng, 0.800)." in lines
    assert "SPLIT-lora over" not in lines  # speed lines compare trained methods with pyreft only


def test_blown_up_perplexity_reads_as_a_factor():
    assert quality.fmt(1311.074, 3063.441, pct=True) == "x1,312 (perplexity multiplied; seeds vary)"
    assert quality.fmt(3.368, 3.302, pct=True) == "336.8% ± 330.2%"
    assert quality.fmt(0.6, 0.1) == "0.600 ± 0.100"


def test_peers_section_leads_with_the_summary_and_defines_the_methods():
    import argparse

    import peers

    curve = {"SPLIT": [0.5, 0.6, 0.7, 0.78, 0.8, 0.8, 0.9], "SFT": [0.5, 0.6, 0.7, 0.7, 0.8, 0.8, 0.9],
             "pyreft-NoReFT": [0.5, 0.6, 0.72, 0.8, 0.8, 0.8, 0.9]}
    ppl = [0, .01, .02, .04, .08, .2, 1.0]
    cells = peer_cells(curve, ppl)
    args = argparse.Namespace(concepts=["c"])
    text, _ = peers.report(args, cells, list(curve), ["--concepts", "c"])
    assert text.index("#### Summary") < text.index("{plot}") < text.index("#### Per concept")
    assert "SPLIT trails the best peer" in text and "SPLIT-lora** is the SPLIT objective" in text
    assert text.count("pyreft trains one row per pair") == 1


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


def test_memory_estimate_grows_with_the_batch_and_not_with_the_form_for_activations():
    small, big = (memory.estimate(memory.SHAPES[0], "vector", rows, 128, 100) for rows in (4, 8))
    assert big["activations"] == 2 * small["activations"] and big["weights"] == small["weights"]
    assert memory.estimate(memory.SHAPES[0], "local_weight", 4, 128, 100)["trainable"] > small["trainable"]


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
    """quality.train_peft_lora used to hard-code `model.layers.{L}.mlp.down_proj` (llama only)."""
    from tiny import tiny_model, tiny_tokenizer

    from split_plugin import ContrastivePair, TrainConfig
    from split_plugin.safety import hooked_modules

    model = tiny_model("gpt_neox")
    pairs = [ContrastivePair(f"Q{i}?", f"yes {i}", f"no {i}") for i in range(4)]
    config = TrainConfig(layer=1, form="lora", method="sft", rank=2, epochs=1, batch_size=2, progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    iv = quality.train_peft_lora(model, tiny_tokenizer(), pairs, config)
    assert iv.form == "lora" and iv.layer == 1 and hooked_modules(model) == []
    assert model.state_dict().keys() == before.keys()

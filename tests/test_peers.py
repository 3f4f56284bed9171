"""Smoke test of benchmarks/peers.py on a tiny random model: one cell per installed peer library,
and the harness's own scoring path against split_plugin.sweep for a plain vector."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from split_plugin import ContrastivePair, Intervention, sweep
from split_plugin.analysis.protocol import BUDGETS

ROOT = Path(__file__).resolve().parent.parent


def _load_peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


peers = _load_peers()  # puts benchmarks/ on sys.path, so its helper modules import
import _peer_methods as methods  # noqa: E402
import _peer_report  # noqa: E402

INSTALLED = methods.installed_peers()
LAYER = 2
TEXT = "The cat sat on the mat. It was a warm day, and the garden was quiet. " * 3
GRID = (0.1, 0.5)


def _pairs(n: int, concept: str = "toy") -> list[ContrastivePair]:
    return [ContrastivePair(question=f"Q{i}: more?", positive="Yes, more." if i % 2 else "Sure.",
                            negative="No." if i % 2 else "Never, no.", concept=concept) for i in range(n)]


def test_scoring_path_matches_sweep_for_a_vector(llama, tok):
    torch.manual_seed(0)
    intervention = Intervention.for_model(llama, "vector", LAYER)
    with torch.no_grad():
        intervention.vector.normal_(0, 0.5)
    pairs, ms = _pairs(5), [0.0, 0.5, 2.0]
    ours = sweep(llama, tok, intervention, pairs, ms, heldout_text=TEXT, bootstrap=0, progress=False,
                 batch_size=2)
    mine = methods.score_forward(methods.vector_forward(llama, intervention), tok, pairs, ms, TEXT, batch_size=2)
    for a, b in zip(ours.summary(), mine.summary()):
        for key in ("multiplier", "accuracy", "pref_mean", "util_mean", "perplexity", "ppl_increase"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-4), (key, a[key], b[key])


def _hooks(model) -> list:
    """Forward hooks left on the model, minus transformers' own output-capturing ones (installed for
    good the first time someone asks for output_hidden_states, as repeng does)."""
    return [h for m in model.modules() for h in [*m._forward_hooks.values(), *m._forward_pre_hooks.values()]
            if "output_capturing_hook" not in getattr(h, "__qualname__", "")]


@pytest.mark.skipif(not INSTALLED, reason=f"no peer library installed; install them with: {methods.INSTALL}")
@pytest.mark.parametrize("method", methods.PEERS)
def test_one_cell_per_installed_peer(llama, tok, method):
    if method not in INSTALLED:
        pytest.skip(f"{methods.LIBRARY[method]} is not installed; install the peers with: {methods.INSTALL}")
    flags = [p.requires_grad for p in llama.parameters()]
    reft = SimpleNamespace(rank=2, epochs=1, lr=1e-2, batch_size=2)
    cell = methods.run_peer_cell(llama, tok, method, _pairs(4), _pairs(3), {"test": _pairs(2)}, TEXT, seed=0,
                               layer=LAYER, grid=GRID, reft=reft)
    val = cell.validation.summary()
    assert [r["multiplier"] for r in val] == [p.multiplier for p in cell.points]
    assert val[0]["multiplier"] == 0.0 and val[0]["ppl_increase"] == pytest.approx(0.0, abs=1e-9)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in val)
    assert cell.train_seconds > 0 and cell.extra["train_sequences"] > 0 and cell.params > 0
    if not cell.extra.get("collapsed"):
        assert cell.extra["edit_ratio"] > 0
        assert [p.multiplier for p in cell.points if p.source == "trained"] == [1.0]  # peers train at m = 1
        assert [p.source for p in cell.points].count("grid") == len(GRID)
    # the model is left as it was: no hooks, same requires_grad flags
    assert [p.requires_grad for p in llama.parameters()] == flags
    assert not _hooks(llama)
    stats = _peer_report.summarize([cell], [method])
    assert set(stats[method]["at_budget"]) == set(BUDGETS)

"""The trainer: losses against a hand computation, row roles, caches, resume, CAA, model safety."""
import math

import pytest
import torch
from tiny import tiny_model, tiny_tokenizer

from split_plugin import SplitPluginError
from split_plugin.config import TrainConfig
from split_plugin.data import ContrastivePair, encode_pairs
from split_plugin.layers import resolve_layout
from split_plugin.objectives import AnswerTokens, off_subspace_share, sequence_logprobs
from split_plugin.regularizers import ManifoldPenalty
from split_plugin.safety import hooked_modules
from split_plugin.trainer import _Trainer, train

PAIRS = [ContrastivePair(f"question number {i}?", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes")
         for i in range(7)]


def cfg(**kw):
    base = dict(layer=2, epochs=1, batch_size=3, lr=0.05, factors=[1.0, 2.0], progress=False, seed=5)
    return {**base, **kw}


def hand_logprobs(model, tok, pair, intervention, m):
    """log P(answer | question) of both answers by a plain hooked forward."""
    enc = encode_pairs(tok, [pair])
    with torch.no_grad(), intervention.steer(model, multiplier=m):
        logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    tokens = AnswerTokens.from_labels(enc.labels)
    lp = sequence_logprobs(logits[tokens.rows, tokens.positions], tokens)
    return lp, tokens.counts


@pytest.mark.parametrize("sub_rows", [False, True])
def test_split_loss_equals_hand_computation(sub_rows):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    config = TrainConfig(**cfg(form="vector", factors=[1.5], sub_rows=sub_rows, batch_size=1,
                               neg_weight=0.4, margin_weight=3.0, margin=0.7))
    trainer = _Trainer(model, tok, PAIRS[:1], config, __import__("split_plugin").resolve_layout(model))
    with torch.no_grad():
        trainer.intervention.vector.normal_()
    loss, margin = trainer.step_loss(0, torch.Generator().manual_seed(0))

    rows = []
    for sign in ([1.0, -1.0] if sub_rows else [1.0]):
        lp, counts = hand_logprobs(model, tok, PAIRS[0], trainer.intervention, sign * 1.5)
        nll = -lp / counts
        # a sub row (-s) swaps roles: the pair's negative answer is the positive
        rows.append((nll[0], nll[1]) if sign > 0 else (nll[1], nll[0]))
    l_pos = torch.stack([r[0] for r in rows])
    l_neg = torch.stack([r[1] for r in rows])
    want = l_pos.mean() + 0.4 * l_neg.mean() + 3.0 * torch.relu(0.7 - (l_neg - l_pos)).mean()
    assert torch.allclose(loss, want, atol=1e-5)
    assert math.isclose(margin, (rows[0][1] - rows[0][0]).item(), abs_tol=1e-5)


def test_sft_scores_only_the_positive_role():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    trainer = _Trainer(model, tok, PAIRS[:2], TrainConfig(**cfg(method="sft", factors=[2.0])),
                       __import__("split_plugin").resolve_layout(model))
    # add rows score positives at +s, sub rows score negatives at -s: nothing else is computed
    assert [(b.sub, b.negative) for b in trainer.blocks] == [(False, False), (True, True)]


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_speedups_give_the_same_training(form):
    model, tok = tiny_model("qwen2"), tiny_tokenizer()
    results = {}
    for name, over in [("fast", {}), ("no_cache", dict(prefix_cache=False)),
                       ("full_head", dict(answer_only_head=False)), ("separate", dict(joint_forward=False)),
                       ("unpacked", dict(pack_pairs=False)), ("unpacked_separate", dict(pack_pairs=False, joint_forward=False))]:
        history = []
        iv = train(model, tok, PAIRS, cfg(form=form, **over), history=history)
        results[name] = (torch.cat([p.flatten() for p in iv.parameters()]), [h["loss"] for h in history])
    for name, (params, losses) in results.items():
        assert torch.allclose(params, results["fast"][0], atol=1e-5), name
        assert losses == pytest.approx(results["fast"][1], abs=1e-5), name


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma", "phi3", "gpt2", "gpt_neox"])
@pytest.mark.parametrize("method, form", [("split", "vector"), ("split", "lora"), ("reps", "local_weight")])
def test_packed_pairs_give_the_unpacked_losses_and_gradients(arch, method, form):
    """One packed row per pair (shared prompt) against one row per answer, same draws and weights."""
    model, tok = tiny_model(arch), tiny_tokenizer()
    config = dict(method=method, form=form, sub_rows=True, neg_weight=0.3, margin_weight=2.0, batch_size=4)
    results = {}
    for pack in (True, False):
        torch.manual_seed(0)
        trainer = _Trainer(model, tok, PAIRS, TrainConfig(**cfg(**config, pack_pairs=pack)), resolve_layout(model))
        with torch.no_grad():
            for p in trainer.intervention.parameters():
                p.normal_(0, 0.2)
        trainer.check_packing()
        assert trainer.packed == pack
        loss, margin = trainer.step_loss(0, torch.Generator().manual_seed(1))
        loss.backward()
        results[pack] = loss, margin, [p.grad.clone() for p in trainer.intervention.parameters()]
    (loss, margin, grads), (want, want_margin, want_grads) = results[True], results[False]
    assert torch.allclose(loss, want, atol=1e-5) and margin == pytest.approx(want_margin, abs=1e-5)
    for got, expected in zip(grads, want_grads):
        assert torch.allclose(got, expected, atol=1e-5)


def test_packing_is_used_only_where_both_answers_are_scored_and_the_window_allows():
    tok = tiny_tokenizer()
    llama, gemma2 = tiny_model("llama"), tiny_model("gemma2")  # gemma2: a 4-token sliding window
    assert not _Trainer(llama, tok, PAIRS, TrainConfig(**cfg(method="sft")), resolve_layout(llama)).packed
    losses = []
    for pack in (True, False):
        trainer = _Trainer(gemma2, tok, PAIRS, TrainConfig(**cfg(pack_pairs=pack)), resolve_layout(gemma2))
        assert not trainer.scoring_batch(0).packed  # the packed rows would not fit the window
        losses.append(trainer.step_loss(0, torch.Generator().manual_seed(1))[0])
    assert torch.allclose(losses[0], losses[1], atol=1e-6)


def test_short_final_batch_and_disk_cache():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    history = []
    train(model, tok, PAIRS, cfg(batch_size=4, epochs=2, cache_limit_mb=0), history=history)
    assert len(history) == 4  # 7 pairs in batches of 4 -> 2 steps per epoch, the second short


def test_training_reduces_loss_and_returns_frozen_intervention():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    history = []
    iv = train(model, tok, PAIRS, cfg(epochs=8, lr=0.1), history=history)
    assert history[-1]["loss"] < history[0]["loss"]
    assert not any(p.requires_grad for p in iv.parameters()) and not iv.training


def test_model_is_left_as_it_was():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    model.train()
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    x = torch.randint(4, 100, (2, 6))
    model.eval()
    before = model(x).logits
    model.train()
    train(model, tok, PAIRS, cfg())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(m.training for m in model.modules())
    assert hooked_modules(model) == []
    model.eval()
    assert torch.equal(model(x).logits, before)


def test_deterministic_with_a_seed():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    a = train(model, tok, PAIRS, cfg(form="lora", dropout=0.1))
    b = train(model, tok, PAIRS, cfg(form="lora", dropout=0.1))
    assert torch.equal(a.lora_A, b.lora_A) and torch.equal(a.lora_B, b.lora_B)


def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = cfg(form="local_weight", epochs=3, checkpoint_dir=str(tmp_path / "ckpt"), checkpoint_every=1)
    straight = train(model, tok, PAIRS, {**settings, "checkpoint_dir": str(tmp_path / "other")})

    calls = {"n": 0}
    original = _Trainer.step_loss

    def interrupt(self, key, gen):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, key, gen)

    monkeypatch.setattr(_Trainer, "step_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, settings)
    assert hooked_modules(model) == []
    monkeypatch.undo()
    resumed = train(model, tok, PAIRS, settings, resume=tmp_path / "ckpt")
    assert torch.allclose(resumed.delta_weight, straight.delta_weight, atol=1e-6)
    assert torch.allclose(resumed.delta_bias, straight.delta_bias, atol=1e-6)


def test_corrupted_checkpoint_and_other_settings_are_refused(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = cfg(checkpoint_dir=str(tmp_path), checkpoint_every=1)
    train(model, tok, PAIRS, settings)
    with pytest.raises(SplitPluginError, match="other settings for \\['lr'\\]"):
        train(model, tok, PAIRS, {**settings, "lr": 0.5}, resume=tmp_path)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: 200])
    with pytest.raises(SplitPluginError, match="corrupted or truncated"):
        train(model, tok, PAIRS, settings, resume=tmp_path)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    original = _Trainer.step_loss
    calls = {"n": 0}

    def poisoned(self, key, gen):
        calls["n"] += 1
        loss, margin = original(self, key, gen)
        return (loss * float("nan") if calls["n"] == 2 else loss), margin

    monkeypatch.setattr(_Trainer, "step_loss", poisoned)
    with pytest.raises(SplitPluginError, match=r"non-finite at step 2 \(last finite loss [0-9.]+\)"):
        train(model, tok, PAIRS, cfg(checkpoint_dir=str(tmp_path), checkpoint_every=1))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 1 and all(torch.isfinite(v).all() for v in state["intervention"].values())
    assert hooked_modules(model) == []


def test_caa_equals_mean_difference_by_hand():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    iv = train(model, tok, PAIRS, cfg(method="caa", batch_size=2))
    diffs = []
    for pair in PAIRS:
        enc = encode_pairs(tok, [pair])
        with torch.no_grad():
            hidden = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                           output_hidden_states=True).hidden_states[3]  # output of layer 2
        means = [hidden[r][enc.labels[r] != -100].mean(0) for r in range(2)]
        diffs.append(means[0] - means[1])
    assert torch.allclose(iv.vector, torch.stack(diffs).mean(0), atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    ([], "training set is empty"),
    (["not a pair"], "must be ContrastivePair"),
])
def test_bad_data(bad, message):
    with pytest.raises(SplitPluginError, match=message):
        train(tiny_model("llama"), tiny_tokenizer(), bad, cfg())


def test_layer_out_of_range_and_cuda_on_cpu():
    with pytest.raises(SplitPluginError, match="has 4 decoder layers"):
        train(tiny_model("llama"), tiny_tokenizer(), PAIRS, cfg(layer=4))
    if not torch.cuda.is_available():
        with pytest.raises(SplitPluginError, match="CUDA is not available"):
            train(tiny_model("llama"), tiny_tokenizer(), PAIRS, cfg(device="cuda"))


def test_kl_option_runs_and_changes_the_result(tmp_path):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    text = tmp_path / "generic.txt"
    text.write_text("The river ran past the mill and under the old stone bridge. " * 6)
    plain = train(model, tok, PAIRS, cfg(epochs=2))
    with_kl = train(model, tok, PAIRS, cfg(epochs=2, kl_weight=1.0, max_length=64, kl_text=str(text)))
    assert not torch.allclose(plain.vector, with_kl.vector)


def test_off_subspace_share_is_zero_inside_and_one_orthogonal():
    basis = torch.eye(4)[:2]                                   # span(e0, e1) in 4-d
    inside, outside = torch.tensor([3.0, -1.0, 0, 0]), torch.tensor([0, 0, 2.0, 1.0])
    assert float(off_subspace_share(None, inside, basis)) == pytest.approx(0.0)
    assert float(off_subspace_share(None, outside, basis)) == pytest.approx(1.0)
    weight = torch.stack([inside, outside])                    # dW [d_in=2, d_out=4]
    assert float(off_subspace_share(weight, None, basis)) == pytest.approx(5 / 15)


@pytest.mark.parametrize("form", ["vector", "lora"])
def test_manifold_option_pulls_the_edit_into_the_principal_subspace(tmp_path, form):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    text = tmp_path / "generic.txt"
    text.write_text("The river ran past the mill and under the old stone bridge. " * 6)
    common = cfg(form=form, epochs=3, max_length=64, kl_text=str(text), manifold_rank=4)
    plain = train(model, tok, PAIRS, {**common, "manifold_weight": 0.0})
    kept = train(model, tok, PAIRS, {**common, "manifold_weight": 50.0})
    penalty = ManifoldPenalty(resolve_layout(model), tok, TrainConfig.from_dict({**common, "manifold_weight": 1.0}))
    penalty(plain)  # the basis is computed on first use
    basis = penalty.basis
    share = {name: float(off_subspace_share(iv.delta_weight_matrix(), iv.delta_bias_vector(), basis))
             for name, iv in (("plain", plain), ("kept", kept))}
    assert basis.shape == (4, model.config.hidden_size)
    assert share["kept"] < 0.5 * share["plain"], share


def test_train_takes_an_explicit_layout():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    spec = {"layers": "model.layers", "down_proj": "mlp.down_proj", "final_norm": "model.norm"}
    given = train(model, tok, PAIRS, cfg(form="lora"), layout=spec)
    found = train(model, tok, PAIRS, cfg(form="lora"))
    assert all(torch.equal(a, b) for a, b in zip(given.parameters(), found.parameters()))
    with pytest.raises(SplitPluginError, match="has no 'mlp.up'"):
        train(model, tok, PAIRS, cfg(), layout={**spec, "down_proj": "mlp.up"})


def test_a_model_where_packing_changes_log_probs_trains_unpacked(monkeypatch):
    import split_plugin.trainer as train_module

    model, tok = tiny_model("llama"), tiny_tokenizer()
    monkeypatch.setattr(train_module, "packing_agrees", lambda *args: False)
    trainer = _Trainer(model, tok, PAIRS, TrainConfig(**cfg()), resolve_layout(model))
    assert trainer.scoring_batch(0).packed
    trainer.check_packing()
    assert not trainer.packed and not trainer.scoring_batch(0).packed

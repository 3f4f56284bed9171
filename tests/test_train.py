"""The trainer: losses against a hand computation, row roles, caches, resume, CAA, model safety."""
import math

import pytest
import torch
from tiny import (LAYER, assert_intact, boom, names, param_copies, replaced_output, short_run, snapshot,
                  tiny_model, tiny_tokenizer, user_model)

from split_plugin import FORMS, SplitPluginError, regularizers
from split_plugin import trainer as train_module
from split_plugin.checkpoints import CHECKPOINT_NAME
from split_plugin.config import TrainConfig
from split_plugin.data import ContrastivePair, encode_pairs
from split_plugin.layers import resolve_layout
from split_plugin.objectives import AnswerTokens, off_subspace_share, sequence_logprobs
from split_plugin.regularizers import KLPenalty, ManifoldPenalty
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


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_a_float64_model_trains_in_float64_and_the_paths_agree_to_rounding(form):
    """In fp64 the fast and plain paths differ by fp64 rounding only: whole runs agree to 1e-12.

    gpt2, because its LayerNorm computes in the input's dtype; llama-family RMSNorms compute in
    fp32 even for fp64 inputs, which leaves fp32 rounding (about 1e-8 per step) in every path.
    """
    model, tok = tiny_model("gpt2").double(), tiny_tokenizer()
    runs = [train(model, tok, PAIRS, cfg(form=form, **over)) for over in ({}, dict(prefix_cache=False,
            answer_only_head=False, joint_forward=False, pack_pairs=False))]
    fast, plain = (torch.cat([p.flatten() for p in iv.parameters()]) for iv in runs)
    assert fast.dtype == torch.float64 and fast.abs().max() > 0
    assert torch.allclose(fast, plain, rtol=0, atol=1e-12)


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
    model, tok = tiny_model("llama"), tiny_tokenizer()
    monkeypatch.setattr(train_module, "packing_agrees", lambda *args: False)
    trainer = _Trainer(model, tok, PAIRS, TrainConfig(**cfg()), resolve_layout(model))
    assert trainer.scoring_batch(0).packed
    trainer.check_packing()
    assert not trainer.packed and not trainer.scoring_batch(0).packed


# =================================================================================================
# failure paths (moved from test_reliability.py): one clear error on bad input, the model left as the
# user had it, an interrupt resumes bit for bit, non-finite losses and gradients stop training
# =================================================================================================


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("config, message", [
    (None, "config must be a TrainConfig, a mapping of settings or a YAML path, got NoneType"),
    (3, "got int"),
    ([("layer", 2)], "got list"),
])
def test_config_of_the_wrong_kind(config, message):
    with pytest.raises(SplitPluginError, match=message):
        train(tiny_model("llama"), tiny_tokenizer(), PAIRS, config)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("model, tok, pairs, message", [
    ("llama", None, PAIRS, "expected a Hugging Face tokenizer, got NoneType"),
    ("llama", "model", PAIRS, "expected a Hugging Face tokenizer, got LlamaForCausalLM"),
    (None, "tok", PAIRS, r"expected a loaded torch model \(nn.Module\), got NoneType"),
    ("a-model-name", "tok", PAIRS, r"expected a loaded torch model \(nn.Module\), got str"),
    ("linear", "tok", PAIRS, "cannot find the decoder layers of this model"),
    ("llama", "tok", None, "training data must be a list of ContrastivePair objects, got NoneType"),
    ("llama", "tok", {"question": "q"}, "got dict"),
    ("llama", "tok", [], "the training set is empty"),
    ("llama", "tok", [("q", "a", "b")], "must be ContrastivePair objects, got tuple"),
])
def test_bad_model_tokenizer_or_pairs_through_train(model, tok, pairs, message):
    real = tiny_model("llama")
    model = {"llama": real, "linear": torch.nn.Linear(3, 3)}.get(model, model)
    tok = {"tok": tiny_tokenizer(), "model": real}.get(tok, tok)
    with pytest.raises(SplitPluginError, match=message):
        train(model, tok, pairs, short_run())
    assert hooked_modules(real) == []


def _interrupt(monkeypatch, where: str) -> None:
    """Raise KeyboardInterrupt at one point of the second optimizer step (or of the KL set-up)."""
    calls = {"step_loss": 0, "kl": 0}
    step_loss, kl_loss, capture = _Trainer.step_loss, KLPenalty.__call__, train_module.capture_prefix

    def counting_step_loss(self, key, gen):
        calls["step_loss"] += 1
        return step_loss(self, key, gen)

    def interrupting_kl(self, intervention, step, s, autocast):
        calls["kl"] += 1
        if where == "backward" and calls["kl"] == 4:  # step 2, after its first key's backward
            raise KeyboardInterrupt
        return kl_loss(self, intervention, step, s, autocast)

    def interrupting_capture(layout, layer, *args, **kwargs):
        in_kl_setup = calls["kl"] > 0 and calls["step_loss"] == 1
        if not ((where == "prefix" and calls["step_loss"] >= 3) or (where == "kl_setup" and in_kl_setup)):
            return capture(layout, layer, *args, **kwargs)

        def ctrl_c(module, args):
            raise KeyboardInterrupt  # inside the capture, while layers L.. are swapped for recorders

        hook = layout.layers[layer - 1].register_forward_pre_hook(ctrl_c)
        try:
            return capture(layout, layer, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(_Trainer, "step_loss", counting_step_loss)
    monkeypatch.setattr(KLPenalty, "__call__", interrupting_kl)
    monkeypatch.setattr(train_module, "capture_prefix", interrupting_capture)
    monkeypatch.setattr(regularizers, "capture_prefix", interrupting_capture)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("where, saved_step", [("prefix", 1), ("kl_setup", 0), ("backward", 1)])
def test_interrupt_then_resume_equals_uninterrupted(tmp_path, monkeypatch, form, where, saved_step):
    tok = tiny_tokenizer()
    model = user_model("qwen2")
    text = tmp_path / "generic.txt"
    text.write_text("The river ran past the mill and under the old stone bridge. " * 4)
    settings = short_run(form=form, epochs=2, batch_size=2, grad_accum=2, dropout=0.1, kl_weight=0.5,
                         kl_text=str(text), max_length=64, checkpoint_dir=str(tmp_path / "ckpt"),
                         checkpoint_every=1)
    straight = param_copies(train(model, tok, PAIRS, {**settings, "checkpoint_dir": None}))
    snap = snapshot(model)

    _interrupt(monkeypatch, where)
    with pytest.raises(KeyboardInterrupt):
        train(model, tok, PAIRS, settings)
    monkeypatch.undo()
    assert_intact(model, snap)
    assert names(tmp_path / "ckpt") == [CHECKPOINT_NAME]
    assert torch.load(tmp_path / "ckpt" / CHECKPOINT_NAME, weights_only=True)["step"] == saved_step

    resumed = param_copies(train(model, tok, PAIRS, settings, resume=tmp_path / "ckpt"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight), form
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path):
    blocker = tmp_path / "ckpt"
    blocker.write_text("mine")
    history = []
    with pytest.raises(SplitPluginError, match="checkpoint_dir .* is an existing file; give a folder"):
        train(tiny_model("llama"), tiny_tokenizer(), PAIRS, short_run(checkpoint_dir=str(blocker)),
              history=history)
    assert history == [] and blocker.read_text() == "mine"


def _nan(output):
    return (output[0] * math.nan,) + tuple(output[1:]) if isinstance(output, tuple) else output * math.nan


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method", ["split", "reps", "caa"])
@pytest.mark.parametrize("at, prefix_cache", [(LAYER + 1, True), (LAYER + 1, False), (LAYER - 1, True)])
def test_exception_in_the_forward_leaves_the_model_intact(method, at, prefix_cache):
    model = user_model()
    snap = snapshot(model)
    with replaced_output(model, at, boom):
        if method == "caa" and at > LAYER:  # CAA stops at layer L: nothing above it runs
            train(model, tiny_tokenizer(), PAIRS, short_run(method=method, prefix_cache=prefix_cache))
        else:
            with pytest.raises(RuntimeError, match="boom in the forward"):
                form = "lora" if method != "caa" else "vector"
                train(model, tiny_tokenizer(), PAIRS, short_run(method=method, form=form, prefix_cache=prefix_cache))
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
def test_nan_in_the_forward_stops_training_and_leaves_the_model_intact(tmp_path):
    model = user_model()
    snap = snapshot(model)
    with (replaced_output(model, LAYER + 1, _nan),
          pytest.raises(SplitPluginError, match=r"loss became non-finite at step 1 \(last finite loss None\)")):
        train(model, tiny_tokenizer(), PAIRS, short_run(form="local_weight"))
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
def test_a_bad_pair_in_the_last_batch_fails_before_any_step(tmp_path):
    model = user_model()
    snap = snapshot(model)
    long = ContrastivePair("a short question?", "an answer far too long " * 4, "No")
    history = []
    with pytest.raises(SplitPluginError, match=r"leaves no room for the prompt within max_length=32"):
        train(model, tiny_tokenizer(), PAIRS + [long],
              short_run(max_length=32, checkpoint_dir=str(tmp_path / "c")), history=history)
    assert history == [] and not (tmp_path / "c").exists()
    assert_intact(model, snap)


class _InfGrad(torch.autograd.Function):
    """Identity forward (a finite loss), infinite gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * math.inf


@pytest.mark.usefixtures("one_thread")
def test_infinite_gradients_stop_training_with_step_and_last_loss(tmp_path, monkeypatch):
    model = user_model()
    snap = snapshot(model)
    original = _Trainer.step_loss
    calls = {"n": 0}

    def poisoned(self, key, gen):
        calls["n"] += 1
        loss, margin = original(self, key, gen)
        return (_InfGrad.apply(loss) if calls["n"] == 3 else loss), margin

    monkeypatch.setattr(_Trainer, "step_loss", poisoned)
    with pytest.raises(SplitPluginError, match=r"the gradient norm became non-finite at step 3 \(last "
                                               r"finite loss \d+\.\d+\); lower lr .*checkpoint is in"):
        train(model, tiny_tokenizer(), PAIRS,
              short_run(form="lora", checkpoint_dir=str(tmp_path), checkpoint_every=1))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["intervention"].values())
    assert_intact(model, snap)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method, form", [(m, f) for m in ("split", "sft", "reps") for f in FORMS]
                         + [("caa", "vector")])
def test_same_seed_gives_identical_interventions(method, form):
    model, tok = tiny_model("llama"), tiny_tokenizer()
    settings = short_run(method=method, form=form, epochs=2, dropout=0.0 if method == "caa" else 0.2)
    rng = torch.get_rng_state()
    a = param_copies(train(model, tok, PAIRS, settings))
    assert torch.equal(torch.get_rng_state(), rng)  # training does not consume the caller's RNG
    torch.manual_seed(1234)  # nor depend on it
    b = param_copies(train(model, tok, PAIRS, settings))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method != "caa":
        c = param_copies(train(model, tok, PAIRS, {**settings, "seed": 4}))
        assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters


def test_bf16_autocast_runs_on_cpu_and_stays_close_to_fp32():
    model, tok = tiny_model("llama"), tiny_tokenizer()
    runs = {}
    for autocast in (None, "bf16"):
        history = []
        iv = train(model, tok, PAIRS, cfg(autocast=autocast), history=history)
        runs[autocast] = [h["loss"] for h in history], iv
    (fp32, _), (bf16, iv) = runs[None], runs["bf16"]
    assert fp32 != bf16  # bf16 really ran: the losses move
    assert bf16 == pytest.approx(fp32, rel=0.05)
    assert all(p.dtype == torch.float32 for p in iv.parameters())  # fp32 master weights

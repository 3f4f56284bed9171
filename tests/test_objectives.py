"""Log-probabilities and log-odds stay finite and exact on half-precision inputs."""
import pytest
import torch

from split_plugin import objectives
from split_plugin.objectives import AnswerTokens, sequence_logprobs


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_token_logprobs_are_computed_in_fp32(dtype):
    logits = torch.tensor([[20.0, -130.0, 0.0, -60.0], [0.5, 0.25, -0.75, 1.0]], dtype=dtype)
    targets = torch.tensor([1, 1])
    naive = torch.log(torch.softmax(logits, -1)).gather(-1, targets[:, None]).squeeze(-1)
    assert not torch.isfinite(naive).all()  # e^-150 underflows to 0 in half precision
    got = objectives.token_logprobs(logits, targets)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    want = torch.log_softmax(logits.double(), -1).gather(-1, targets[:, None]).squeeze(-1)
    assert torch.allclose(got.double(), want, rtol=1e-6, atol=0)  # half arithmetic is off by ~1e-3
    half = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    assert not torch.allclose(half.double(), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_log_odds_of_half_inputs_are_finite_fp64(dtype):
    lp_pos = torch.tensor([-20.0, -1e-3, -0.6931, -110.0], dtype=dtype)
    lp_neg = torch.tensor([-25.0, -12.0, -9.0, -115.0], dtype=dtype)
    p = lp_pos.exp() + lp_neg.exp()
    naive = torch.log(p / (1 - p))
    assert not torch.isfinite(naive).all()  # exp underflows / 1 - p rounds to 0 in half precision
    util = objectives.utility_log_odds(lp_pos, lp_neg)
    pref = objectives.preference_log_odds(lp_pos, lp_neg)
    assert util.dtype == pref.dtype == torch.float64
    assert torch.isfinite(util).all() and torch.isfinite(pref).all()
    s = torch.logaddexp(lp_pos.double(), lp_neg.double())
    assert torch.allclose(util, s - torch.log1p(-s.exp()), rtol=1e-9)
    assert torch.allclose(pref, lp_pos.double() - lp_neg.double())


def test_sequence_logprobs_of_bf16_logits_are_fp32():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    tokens = AnswerTokens.from_labels(labels)
    logits = (torch.randn(tokens.rows.numel(), 16, generator=torch.Generator().manual_seed(0)) * 40).bfloat16()
    got = sequence_logprobs(logits, tokens)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()

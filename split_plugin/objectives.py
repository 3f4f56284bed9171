"""Answer log-probabilities, the training losses (SPLIT, SFT, RePS) and the log-odds scale."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .precision import upcast


@dataclass
class AnswerTokens:
    """Where the answer tokens of each row are predicted: logits at `positions` give `targets`."""

    rows: torch.Tensor       # [n] row of each answer token
    positions: torch.Tensor  # [n] position whose logits predict it (token position - 1)
    targets: torch.Tensor    # [n] token id
    counts: torch.Tensor     # [rows] answer tokens per row

    @classmethod
    def from_labels(cls, labels: torch.Tensor) -> "AnswerTokens":
        """Read answer tokens off a [B, T] labels tensor (-100 marks prompt and padding)."""
        mask = labels[:, 1:] != -100
        rows, pos = mask.nonzero(as_tuple=True)
        return cls(rows=rows, positions=pos, targets=labels[:, 1:][rows, pos], counts=mask.sum(1))


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per token, computed in fp32 (fp64 for fp64 logits) whatever the logits' dtype."""
    return torch.log_softmax(upcast(logits), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def sequence_logprobs(logits: torch.Tensor, tokens: AnswerTokens) -> torch.Tensor:
    """Sum of answer-token log-probs per row, from logits at `tokens.positions` ([n, vocab])."""
    per_token = token_logprobs(logits, tokens.targets)
    out = per_token.new_zeros(tokens.counts.shape[0])
    return out.index_add(0, tokens.rows, per_token)


# -- the log-odds scale -------------------------------------------------------------------
def preference_log_odds(logp_pos: torch.Tensor, logp_neg: torch.Tensor) -> torch.Tensor:
    """PrefOdds = L_n - L_p = log P(A_p|q) - log P(A_n|q) (sequence sums)."""
    return logp_pos.double() - logp_neg.double()


def utility_log_odds(logp_pos: torch.Tensor, logp_neg: torch.Tensor) -> torch.Tensor:
    """UtilOdds = log[(p_p + p_n) / (1 - p_p - p_n)], in log space; NaN where p_p + p_n >= 1.

    log(1 - e^s) = log(-expm1(s)) stays accurate for s near 0 and for very negative s.
    """
    s = torch.logaddexp(logp_pos.double(), logp_neg.double())
    out = s - torch.log(-torch.expm1(s))
    return torch.where(s < 0, out, torch.full_like(out, float("nan")))


# -- losses ----------------------------------------------------------------------------------
def nll(logp_sum: torch.Tensor, counts: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-row negative log-likelihood: token mean (the reference's) or sequence sum."""
    return -logp_sum / counts.clamp(min=1) if reduction == "mean" else -logp_sum


def split_loss(loss_pos: torch.Tensor, loss_neg: torch.Tensor, pos_weight: float, neg_weight: float,
               margin_weight: float, margin: float, pooled: bool = False) -> torch.Tensor:
    """lambda_p L_pos + lambda_n L_neg + gamma relu(theta - (L_neg - L_pos)), per pair.

    Each pair's positive and negative losses come from the same multiplier, so the hinge
    compares like with like. `pooled=True` reproduces the reference: batch means first, one hinge.
    """
    utility = pos_weight * loss_pos.mean() + neg_weight * loss_neg.mean()
    if margin_weight == 0:
        return utility
    if pooled:
        hinge = F.relu(margin - (loss_neg.mean() - loss_pos.mean()))
    else:
        hinge = F.relu(margin - (loss_neg - loss_pos)).mean()
    return utility + margin_weight * hinge


def reps_loss(logp_pos: torch.Tensor, logp_neg: torch.Tensor, ref_pos: torch.Tensor,
              ref_neg: torch.Tensor, counts_pos: torch.Tensor, counts_neg: torch.Tensor,
              beta: float = 2.0, gamma: float = 1.0) -> torch.Tensor:
    """RePS-style preference loss: SimPO on length-normalised log-probs relative to the unsteered model.

    -log sigmoid(beta * (Δ_pos - Δ_neg) - gamma), Δ = (log p_steered - log p_ref) / tokens.
    """
    delta_pos = (logp_pos - ref_pos) / counts_pos.clamp(min=1)
    delta_neg = (logp_neg - ref_neg) / counts_neg.clamp(min=1)
    return -F.logsigmoid(beta * (delta_pos - delta_neg) - gamma).mean()


def off_subspace_share(delta_weight: torch.Tensor | None, delta_bias: torch.Tensor | None,
                       basis: torch.Tensor) -> torch.Tensor:
    """Share of an edit's output-space energy outside span(basis) (rows orthonormal, [k, d_out]).

    `delta_weight` is dW as [d_in, d_out] (x @ dW), `delta_bias` db as [d_out]: every shift the edit
    can make is a combination of dW's rows and db, so this is 0 when all of them lie in the
    subspace and 1 when all are orthogonal to it.
    """
    parts = [t.reshape(-1, t.shape[-1]) for t in (delta_weight, delta_bias) if t is not None]
    edit = torch.cat(parts).float()
    total = edit.pow(2).sum()
    inside = (edit @ basis.T).pow(2).sum()
    return (total - inside) / total.clamp_min(1e-12)


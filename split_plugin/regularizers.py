"""The trainer's optional utility terms: KL to the unsteered model on prose, and the manifold share.

Both read generic text (`kl_text`: the "fit" half of the bundled prose by default, never the
half that measures held-out perplexity) and are prepared once, on first use.
"""
from __future__ import annotations

import contextlib

import torch

from .config import TrainConfig
from .data import encode_texts, load_heldout_text, read_text
from .forward import Prefix, capture_prefix, run_suffix
from .intervention import Intervention
from .layers import ModelLayout
from .objectives import off_subspace_share
from .precision import upcast


def _prose(config: TrainConfig) -> str:
    """The generic text both terms read."""
    text = config.kl_text
    return load_heldout_text("fit") if text in (None, "heldout") else read_text(text)


class KLPenalty:
    """KL(unsteered || steered) next-token distributions on generic text at +s and -s."""

    def __init__(self, layout: ModelLayout, tokenizer, config: TrainConfig):
        self.layout, self.tokenizer, self.config = layout, tokenizer, config
        self.windows: list[tuple[Prefix, torch.Tensor, torch.Tensor]] = []

    def __call__(self, intervention: Intervention, step: int, strength: float,
                 autocast: contextlib.AbstractContextManager) -> torch.Tensor:
        if not self.windows:
            self._prepare()
        prefix, mask, ref_logp = self.windows[step % len(self.windows)]
        multipliers = torch.tensor([strength, -strength], device=mask.device)
        index = torch.zeros(2, dtype=torch.long)
        with autocast, intervention.steer(self.layout.model, multipliers, layout=self.layout):
            logits = run_suffix(self.layout, prefix, index)
        logp = torch.log_softmax(upcast(logits), -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        return (kl * mask).sum() / mask.sum().clamp(min=1)

    @torch.no_grad()
    def _prepare(self) -> None:
        """Up to four windows of the text: their layer-L prefix and unsteered log-probs."""
        ids, mask, _ = encode_texts(self.tokenizer, [_prose(self.config)],
                                    max_length=min(self.config.max_length, 128))
        device = next(self.layout.model.parameters()).device
        for row in range(min(4, ids.shape[0])):
            prefix = capture_prefix(self.layout, self.config.layer, ids[row:row + 1].to(device),
                                    mask[row:row + 1].to(device))
            ref = torch.log_softmax(upcast(run_suffix(self.layout, prefix)), -1)
            self.windows.append((prefix, mask[row:row + 1].to(device).float(), ref))


class ManifoldPenalty:
    """Share of the edit pointing off the unsteered states' principal subspace at layer L."""

    def __init__(self, layout: ModelLayout, tokenizer, config: TrainConfig):
        self.layout, self.tokenizer, self.config = layout, tokenizer, config
        self.basis: torch.Tensor | None = None

    def __call__(self, intervention: Intervention) -> torch.Tensor:
        if self.basis is None:
            from .analysis.manifold import principal_basis  # scipy: loaded only when the option is on

            c = self.config
            self.basis = principal_basis(self.layout, self.tokenizer, _prose(c), c.layer, c.manifold_rank,
                                         max_length=min(c.max_length, 128))
        return off_subspace_share(intervention.delta_weight_matrix(), intervention.delta_bias_vector(),
                                  self.basis)

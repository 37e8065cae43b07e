"""Adversarial membership training (`mia_adversary.weight=λ`): unlearn so that the forgotten
items look like items the model never saw (issue 27, docs/methods.md).

A membership adversary — logistic regression on per-item loss features, the statistics
TOFU's and MUSE's membership attacks use (the answer's mean token loss and its Min-K% loss,
k = 0.4) — learns online to tell the forget items from the client's own holdout items (never
trained on). Each micro-batch, the adversary takes `inner_steps` Adam steps on the current features
(detached), and the model's loss gains λ·mean softplus(s_f): minus the log-probability that
the adversary calls each forget item a non-member. Over-unlearning (forget losses far above
the holdout's, privleak ≪ 0) is as visible to it as remembering, so the term pulls both ways.

The holdout items must not be the evaluation's: for TOFU forgetNN the default is holdout10
without the rows of the evaluation's holdoutNN (so forget10, whose evaluation uses all of
holdout10, needs `mia_adversary.holdout_split`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpu.config import field
from mpu.errors import ConfigError

MIN_K = 0.4  # the Min-K% fraction of OpenUnlearning's mia_min_k


@dataclass
class AdversaryConfig:
    """Adversarial membership training; off unless `weight` > 0."""

    weight: float = field(0.0, help="λ, the weight of the membership term (0: off)")
    lr: float = field(0.1, help="the adversary's learning rate (Adam)")
    inner_steps: int = field(
        20, help="adversary steps per micro-batch (a 2-feature logistic regression: it nearly "
        "converges on the current features, so the model meets its best response)"
    )  # fmt: skip
    holdout_split: str | None = field(
        None, help="the client's own never-seen items (TOFU default: holdout10 without the "
        "evaluation's holdout rows)"
    )  # fmt: skip
    holdout_batch: int = field(8, help="holdout items per micro-batch")

    def __post_init__(self) -> None:
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise ConfigError(f"mia_adversary.weight={self.weight}: a finite number >= 0")
        if not self.lr > 0 or self.inner_steps < 1 or self.holdout_batch < 1:
            raise ConfigError("mia_adversary: lr > 0, inner_steps >= 1, holdout_batch >= 1")

    @property
    def enabled(self) -> bool:
        return self.weight > 0


def loss_features(model, batch) -> torch.Tensor:
    """[B, 2]: each item's mean answer-token NLL and its Min-K% NLL (the mean of the k-fraction
    highest token losses); differentiable."""
    from mpu.methods.common import answer_token_nll, item_means

    nll, mask = answer_token_nll(model, batch)
    n = mask.sum(-1).clamp(min=1)
    mean = item_means(nll, mask)
    masked = nll.masked_fill(~mask, float("-inf"))
    k = (n.float() * MIN_K).ceil().long().clamp(min=1)
    top = masked.sort(dim=-1, descending=True).values
    keep = torch.arange(top.size(-1), device=top.device)[None, :] < k[:, None]
    min_k = (top.masked_fill(~keep, 0.0)).sum(-1) / k
    return torch.stack([mean, min_k], dim=-1)


class MembershipAdversary:
    """The adversary, the client's holdout items, and the model's adversarial term."""

    def __init__(self, cfg: AdversaryConfig, holdout: list, tokenizer, seed: int) -> None:
        if not holdout:
            raise ConfigError("mia_adversary: no holdout items to tell the forget items from")
        self.cfg, self.holdout, self.tokenizer = cfg, holdout, tokenizer
        self.gen = torch.Generator().manual_seed(seed)  # the same draws on every copy
        self.clf = torch.nn.Linear(2, 1)
        with torch.no_grad():
            self.clf.weight.zero_()
            self.clf.bias.zero_()
        self.opt = torch.optim.Adam(self.clf.parameters(), lr=cfg.lr)

    def _holdout_batch(self, device) -> dict:
        from mpu.text import collate, pad_id_of

        idx = torch.randint(len(self.holdout), (self.cfg.holdout_batch,), generator=self.gen)
        items = [self.holdout[i] for i in idx.tolist()]
        batch = collate([e.input_ids for e in items], pad_id=pad_id_of(self.tokenizer),
                        labels=[e.labels for e in items])  # fmt: skip
        return {k: v.to(device) for k, v in batch.items()}

    def term(self, model, forget: dict) -> tuple[torch.Tensor, dict[str, float]]:
        """λ·mean softplus(s_f) after the adversary's own steps; its accuracy for the logs."""
        phi_f = loss_features(model, forget)
        with torch.no_grad():
            phi_h = loss_features(model, self._holdout_batch(phi_f.device))
        mu, sd = phi_h.mean(0), phi_h.std(0).clamp(min=1e-3)
        z_f, z_h = (phi_f - mu) / sd, (phi_h - mu) / sd
        x = torch.cat([z_f.detach(), z_h]).float().cpu()
        y = torch.cat([torch.ones(len(z_f)), torch.zeros(len(z_h))])
        for _ in range(self.cfg.inner_steps):
            self.opt.zero_grad()
            F.binary_cross_entropy_with_logits(self.clf(x).squeeze(-1), y).backward()
            self.opt.step()
        w, b = self.clf.weight.detach().to(z_f), self.clf.bias.detach().to(z_f)
        s_f = z_f.float() @ w[0].float() + b.float()
        term = self.cfg.weight * F.softplus(s_f).mean()
        with torch.no_grad():
            acc = float(((self.clf(x).squeeze(-1) > 0).float() == y).float().mean())
        return term, {"adversary_loss": float(term.detach()), "adversary_accuracy": acc}

"""Adversarial membership training: the adversary's features, and a run whose forgotten items
end nearer the never-seen items' losses than the same run without it (issue 27)."""

from __future__ import annotations

import copy

import pytest
import torch

from mpu.client.adversary import AdversaryConfig, loss_features
from mpu.client.batches import encode_rows
from mpu.client.importance import item_batches, item_losses
from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.errors import ConfigError
from toolkit import fmt_of, synthetic_qa


def test_features_are_the_mean_loss_and_the_min_k_loss(target, tok, rows):
    items = encode_rows(tok, rows[:5], fmt=fmt_of(tok), max_length=128)[0]
    batch = next(item_batches(items, tok, 5))
    with torch.no_grad():
        phi = loss_features(target, batch)
        torch.testing.assert_close(phi[:, 0], item_losses(target, batch))
        from mpu.methods.common import forward_logits, token_nll

        nll, mask = token_nll(forward_logits(target, batch), batch["labels"])
    for i in range(5):
        tokens = nll[i][mask[i]].sort(descending=True).values
        k = max(1, int(torch.ceil(torch.tensor(0.4 * len(tokens)))))
        assert float(phi[i, 1]) == pytest.approx(float(tokens[:k].mean()), rel=1e-5)


def test_adversary_settings_are_checked(target, tok, rows):
    with pytest.raises(ConfigError, match=r"mia_adversary\.weight"):
        AdversaryConfig(weight=-1)
    cfg = ClientTrainConfig(method="GradAscent", precision="fp32",
                            mia_adversary={"weight": 1.0})  # fmt: skip
    with pytest.raises(ConfigError, match="holdout items"):
        train_unlearning(copy.deepcopy(target), tok, rows[:4], None, cfg, holdout_rows=[])


def _gap(model, tok, forget, holdout) -> float:
    """|mean forget loss − mean holdout loss|: what a loss-threshold attack reads."""

    def mean_loss(rows):
        items = encode_rows(tok, rows, fmt=fmt_of(tok), max_length=128)[0]
        with torch.no_grad():
            return float(
                item_losses(model.eval(), next(item_batches(items, tok, len(items)))).mean()
            )

    return abs(mean_loss(forget) - mean_loss(holdout))


@pytest.mark.slow
def test_the_adversary_pulls_forgotten_items_towards_never_seen_ones(target, tok, rows):
    """GradAscent overshoots: the forget losses end far above the holdout's (privleak ≪ 0).
    With the adversary the gap to the holdout's losses is smaller."""
    forget, holdout, probe = rows[:8], synthetic_qa(24, seed=9)[:16], synthetic_qa(24, seed=9)[16:]
    base = dict(method="GradAscent", lr=2e-3, epochs=6, batch_size=4, grad_accum=1,
                precision="fp32", schedule="constant", warmup_epochs=0.0)  # fmt: skip
    plain, adv = copy.deepcopy(target), copy.deepcopy(target)
    train_unlearning(plain, tok, forget, None, ClientTrainConfig(**base), progress=False)
    res = train_unlearning(adv, tok, forget, None, ClientTrainConfig(
        **base, mia_adversary={"weight": 5.0}), holdout_rows=holdout, progress=False)  # fmt: skip
    assert all("adversary_accuracy" in s for s in res.logs["steps"])
    gaps = (_gap(plain, tok, forget, probe), _gap(adv, tok, forget, probe))
    print(f"loss gap to never-seen items: plain {gaps[0]:.3f}, adversary {gaps[1]:.3f}")
    assert gaps[1] < 0.7 * gaps[0]

"""Example-level DP-SGD (`dp.unit=example`): per-item clipping bounds what one item can move,
the noise has the calibrated size, the accounting is opacus' own with the m copies' shared
sampling charged, the copies of a round sample alike, and what cannot work is refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpu.client.batches import poisson_batch
from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.errors import ConfigError
from mpu.privacy.dp import DPConfig, epsilon, rdp_orders
from mpu.privacy.dp_sgd import ExampleClipper


def _linear_grads(xs: list[torch.Tensor], w: torch.nn.Parameter) -> list[torch.Tensor]:
    out = []
    for x in xs:
        w.grad = None
        (w * x).sum().backward()  # the gradient is x itself
        out.append(w.grad.clone())
    return out


def test_each_item_is_clipped_alone_and_the_sum_is_averaged_over_the_expected_batch():
    w = torch.nn.Parameter(torch.zeros(3))
    xs = [torch.tensor([3.0, 4.0, 0.0]), torch.tensor([0.0, 0.3, 0.4])]  # norms 5 and 0.5
    clipper = ExampleClipper([w], clip=1.0, noise_multiplier=0.0, expected_batch=4.0)
    norms = []
    for g in _linear_grads(xs, w):
        w.grad = g
        norms.append(clipper.add())
        assert w.grad is None  # read and cleared: the next item starts from nothing
    stats = clipper.release()
    expected = (xs[0] / 5.0 + xs[1]) / 4.0  # the first clipped to norm 1, the second kept
    torch.testing.assert_close(w.grad, expected)
    assert norms == pytest.approx([5.0, 0.5])
    assert stats == {"dp_examples": 2, "dp_clipped": 0.5, "dp_item_grad_norm": 2.75}


def test_the_noise_has_std_z_times_clip_over_the_expected_batch():
    w = torch.nn.Parameter(torch.zeros(200_000))
    gen = torch.Generator().manual_seed(0)
    clipper = ExampleClipper([w], clip=0.5, noise_multiplier=1.3, expected_batch=8.0,
                             generator=gen)  # fmt: skip
    stats = clipper.release()  # a step that sampled nothing still releases noise
    std = float(w.grad.std())
    # sample std of n normals: relative standard error 1/√(2n) = 0.16 %; allow 5 of them
    assert std == pytest.approx(1.3 * 0.5 / 8.0, rel=5 / math.sqrt(2 * 200_000))
    assert abs(float(w.grad.mean())) < 5 * std / math.sqrt(200_000)
    assert stats["dp_examples"] == 0


@pytest.mark.parametrize(("z", "q", "steps", "m"), [(1.0, 0.25, 20, 1), (2.0, 0.1, 50, 4)])
def test_the_accounting_is_opacus_with_the_shared_sampling_charged(z, q, steps, m):
    """m copies noised independently on the same sampled items: one release of z/√m a step."""
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=z / math.sqrt(m), sample_rate=q)
    cfg = DPConfig(clip=1.0, noise_multiplier=z, unit="example", copies=m)
    assert cfg.example_spent(q, steps) == pytest.approx(
        acc.get_epsilon(1e-5, alphas=rdp_orders()), rel=1e-12
    )
    assert epsilon(z, steps, 1e-5, q) < epsilon(z, steps, 1e-5)  # sampling amplifies


def test_a_target_epsilon_sets_z_with_the_copies_counted():
    one = DPConfig(clip=1.0, epsilon=8.0, unit="example")
    four = DPConfig(clip=1.0, epsilon=8.0, unit="example", copies=4)
    assert 7.5 < one.example_spent(0.2, 30) <= 8.0
    assert 7.5 < four.example_spent(0.2, 30) <= 8.0
    assert four.example_z(0.2, 30) == pytest.approx(2 * one.example_z(0.2, 30), rel=1e-12)


def test_poisson_batches_are_fixed_by_seed_and_step_and_average_q_n():
    a = poisson_batch(40, 10, 0, 0.2, seed=7, step=3)
    assert a == poisson_batch(40, 10, 0, 0.2, seed=7, step=3)
    assert a != poisson_batch(40, 10, 0, 0.2, seed=7, step=4)
    assert len(a.retain) == len(a.forget) and not a.idk
    sizes = [len(poisson_batch(40, 0, 0, 0.2, seed=7, step=s).forget) for s in range(2000)]
    # Binomial(40, 0.2): mean 8, sd 2.53; the mean of 2000 draws within 5 standard errors
    assert sum(sizes) / len(sizes) == pytest.approx(8.0, abs=5 * 2.53 / math.sqrt(2000))


def _dp_cfg(**dp) -> ClientTrainConfig:
    return ClientTrainConfig(method="GradAscent", precision="fp32", optimizer="sgd", lr=1.0, weight_decay=0.0,
                             batch_size=4, grad_accum=1, max_steps=1, warmup_steps=0,
                             dp={"unit": "example", **dp})  # fmt: skip


def test_one_step_moves_the_model_by_at_most_the_clipped_items(target, tok, rows):
    """SGD at lr 1, no noise, C far below every item's gradient norm: the step's change is
    the sum of |S| vectors of norm C over the expected batch, so its norm is at most |S|·C/4."""
    model = copy.deepcopy(target)
    before = [p.detach().clone() for p in model.parameters()]
    res = train_unlearning(model, tok, rows[:16], None, _dp_cfg(clip=1e-3, noise_multiplier=0.0),
                           progress=False)  # fmt: skip
    rec, acct = res.logs["steps"][0], res.logs["dp_sgd"]
    moved = math.sqrt(sum(float((p.detach() - b).pow(2).sum())
                          for p, b in zip(model.parameters(), before, strict=True)))  # fmt: skip
    assert acct["sample_rate"] == 0.25 and acct["expected_batch"] == pytest.approx(4.0)
    assert rec["dp_examples"] >= 1 and rec["dp_clipped"] == 1.0
    assert rec["dp_item_grad_norm"] > 1e-1  # clipping really bit
    assert 0 < moved <= rec["dp_examples"] * 1e-3 / 4.0 * (1 + 1e-5)
    assert res.logs["micro_batches"] == rec["dp_examples"]  # one backward pass per item
    assert res.effective_config["max_grad_norm"] == 0.0  # the per-item clip replaces it


def test_copies_sample_alike_and_draw_their_own_noise(target, tok, rows):
    cfg = _dp_cfg(clip=1.0, noise_multiplier=1.0)
    a, b = copy.deepcopy(target), copy.deepcopy(target)
    ra = train_unlearning(a, tok, rows[:16], None, cfg, order_seed=5, progress=False)
    rb = train_unlearning(b, tok, rows[:16], None, cfg, order_seed=5, progress=False)
    assert ra.logs["order_digest"] == rb.logs["order_digest"]
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert ra.logs["dp_sgd"]["epsilon"] == rb.logs["dp_sgd"]["epsilon"] < math.inf


def test_what_dp_sgd_cannot_do_is_refused(target, tok, rows):
    with pytest.raises(ConfigError, match=r"dp\.unit='sample'"):
        DPConfig(clip=1.0, epsilon=8.0, unit="sample")
    bad = [({"trainable": "salient"}, "salient"),
           ({"method": "PDU", "hparams": {"retain_loss_eps": 0.3}}, "PDU")]  # fmt: skip
    for change, what in bad:
        cfg = ClientTrainConfig(**{**_dp_cfg(clip=1.0, epsilon=8.0).__dict__, **change})
        with pytest.raises(ConfigError, match=f"DP-SGD.*{what}"):
            train_unlearning(copy.deepcopy(target), tok, rows[:4], rows[4:8], cfg, progress=False)


def test_a_dp_sgd_run_drowned_by_its_noise_says_so(target, tok, rows):
    """AdamW under noise 50× the clip: the steps are the noise's, the forget loss barely moves,
    and the warning names the noise (with its measured ratio), not the learning rate."""
    from mpu.client.effect import no_effect

    cfg = ClientTrainConfig(method="GradAscent", precision="fp32", lr=1e-4, batch_size=4,
                            grad_accum=1, max_steps=2, warmup_steps=0,
                            dp={"unit": "example", "clip": 1.0, "noise_multiplier": 50.0})  # fmt: skip
    res = train_unlearning(copy.deepcopy(target), tok, rows[:16], None, cfg, progress=False)
    acct = res.logs["dp_sgd"]
    d = sum(p.numel() for p in target.parameters())
    assert acct["noise_to_signal"] == pytest.approx(50.0 * math.sqrt(d) / (4.0 * math.sqrt(2)))
    settings = cfg.resolve(d)
    said = no_effect(res.logs, 1.0, settings)
    assert said is not None and "under DP-SGD" in said
    assert f"{acct['noise_to_signal']:.0f}x" in said and "raise lr" not in said

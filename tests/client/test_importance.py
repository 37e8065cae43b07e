"""Issue 27: the impact assessment's estimators against their definitions, and localized
updates that are exactly zero outside their mask and aggregate like any other update."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.func import functional_call, grad, jvp

from mpu.client.batches import encode_rows
from mpu.client.importance import (
    fisher_diagonal,
    gradient_magnitude,
    hessian_diagonal,
    item_batches,
    item_losses,
    item_losses_functional,
    relative,
)
from mpu.client.salient import SalientConfig, rank_scales, top_masks
from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.errors import ConfigError
from toolkit import fmt_of


def _items(tok, rows, n):
    return encode_rows(tok, rows[:n], fmt=fmt_of(tok), max_length=128)[0]


def _named(model, pattern=""):
    return [(n, p) for n, p in model.named_parameters() if pattern in n]


def test_fisher_is_the_mean_squared_per_item_gradient(target, tok, rows):
    """One item per backward pass equals per-item gradients taken out of one padded batch."""
    model = copy.deepcopy(target).eval()
    items, named = _items(tok, rows, 6), _named(model)
    fisher = fisher_diagonal(model, named, items, tok)
    batch = next(item_batches(items, tok, len(items)))  # padded: rows of unequal length
    losses = item_losses(model, batch)
    expected = {n: torch.zeros_like(p) for n, p in named}
    for i in range(len(items)):
        grads = torch.autograd.grad(losses[i], [p for _, p in named], retain_graph=True)
        for (n, _), g in zip(named, grads, strict=True):
            expected[n] += g.square() / len(items)
    scale = max(float(t.abs().max()) for t in expected.values())
    for n in expected:
        torch.testing.assert_close(fisher[n], expected[n], rtol=1e-4, atol=1e-6 * scale)


def test_gradient_magnitude_is_the_mean_loss_gradient(target, tok, rows):
    model = copy.deepcopy(target).eval()
    items, named = _items(tok, rows, 6), _named(model)
    got = gradient_magnitude(model, named, items, tok, batch_size=4)  # two uneven batches
    loss = item_losses(model, next(item_batches(items, tok, len(items)))).mean()
    want = torch.autograd.grad(loss, [p for _, p in named])
    for (n, _), g in zip(named, want, strict=True):
        torch.testing.assert_close(got[n], g.abs(), rtol=1e-4, atol=1e-7)


def _exact_hessian_rows(model, named, items, tok, coords):
    """Rows i of ∇²L for the flat coordinates `coords` of the `named` parameters, by one
    Hessian-vector product with each unit vector."""
    from mpu.client.importance import _math_attention

    batch = next(item_batches(items, tok, len(items)))
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in dict(named)}
    primal = {n: p.detach() for n, p in named}
    loss = lambda t: item_losses_functional(functional_call, model, {**fixed, **t}, batch).mean()  # noqa: E731
    sizes = [p.numel() for _, p in named]
    rows_out = []
    for c in coords:
        e = torch.zeros(sum(sizes))
        e[c] = 1.0
        parts = dict(zip(primal, torch.split(e, sizes), strict=True))
        tangent = {n: parts[n].view_as(p) for n, p in primal.items()}
        with _math_attention():
            _, hv = jvp(grad(loss), (primal,), (tangent,))
        rows_out.append(torch.cat([hv[n].flatten() for n in primal]))
    return torch.stack(rows_out)


def test_hutchinson_matches_the_exact_hessian_diagonal_within_its_error(target, tok, rows):
    """For Rademacher probes the estimate of H_ii has mean H_ii and variance Σ_{j≠i} H_ij² / K:
    every sampled coordinate lies within 4.5 standard errors, and the standardized errors have
    the unit variance that says the estimator is Hutchinson's and not something tighter/looser."""
    model = copy.deepcopy(target).eval()
    items = _items(tok, rows, 3)
    # the two norms of block 0: few enough coordinates that the off-diagonal mass (the
    # estimator's variance) is small next to the diagonal, so a wrong estimate cannot pass
    named = [(n, p) for n, p in _named(model, "layers.0.") if "norm" in n]
    probes = 48
    est = hessian_diagonal(model, named, items, tok, probes=probes, seed=3, batch_size=8)
    flat_est = torch.cat([est[n].flatten() for n, _ in named])
    coords = torch.randperm(flat_est.numel(), generator=torch.Generator().manual_seed(0))[:24]
    h = _exact_hessian_rows(model, named, items, tok, coords.tolist())
    diag = h[torch.arange(len(coords)), coords]
    off = h.square().sum(1) - diag.square()
    se = (off.double() / probes).sqrt()
    z = (flat_est[coords].double() - diag.double()) / se
    assert float((diag.abs() / se).median()) > 2  # an estimate of 0 would fail below
    assert float(z.abs().max()) <= 4.5, z
    assert 0.3 <= float(z.square().mean()) <= 2.5, z


def test_relative_score_damps_parameters_the_retain_set_leaves_alone():
    forget = {"a": torch.tensor([1.0, 1.0, 0.0])}
    retain = {"a": torch.tensor([1.0, 0.0, 2.0])}
    r = relative(forget, retain)  # floor = 0.1 · mean(retain) = 0.1
    torch.testing.assert_close(r["a"], torch.tensor([1 / 1.1, 1 / 0.1, 0.0]))
    assert relative(forget, None) == forget


def test_top_masks_keep_the_fraction_and_ties_together():
    scores = {"a": torch.tensor([5.0, 1.0, 3.0, 3.0]), "b": torch.tensor([0.0, 4.0, 2.0, 0.5])}
    masks = top_masks(scores, 0.25)  # ⌈0.25·8⌉ = 2 → 5 and 4
    assert masks["a"].tolist() == [True, False, False, False]
    assert masks["b"].tolist() == [False, True, False, False]
    tied = top_masks(scores, 0.375)  # the third largest is a tie at 3: both kept
    assert int(sum(m.sum() for m in tied.values())) == 4
    zero = top_masks({"a": torch.tensor([0.0, 0.0, 1.0])}, 0.9)  # never keep score 0
    assert zero["a"].tolist() == [False, False, True]
    scales = rank_scales(scores, masks)
    assert scales["a"].tolist() == [1.0, 0.0, 0.0, 0.0] and scales["b"][1] == 0.5


def test_salient_settings_are_checked():
    with pytest.raises(ConfigError, match=r"salient\.fraction"):
        SalientConfig(fraction=0)
    with pytest.raises(ConfigError, match=r"salient\.score"):
        ClientTrainConfig(method="NPO", trainable="salient", salient={"score": "magic"})
    with pytest.raises(ConfigError, match="sharding=fsdp with trainable=salient"):
        ClientTrainConfig(method="NPO", trainable="salient", sharding="fsdp")


@pytest.mark.parametrize("lr_scale", ["none", "importance"])
def test_a_localized_update_is_exactly_zero_outside_its_mask(target, tok, rows, lr_scale):
    """The changed weights are a subset of the top 5 % by the copy's own Fisher score, weight
    decay included (AdamW decays every weight it holds; the mask puts them back)."""
    from mpu.client.importance import fisher_diagonal as fisher

    model = copy.deepcopy(target)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = ClientTrainConfig(method="GradDiff", trainable="salient", lr=1e-3, batch_size=4,
                            grad_accum=1, precision="fp32", epochs=2, weight_decay=0.1,
                            salient={"fraction": 0.05, "lr_scale": lr_scale})  # fmt: skip
    result = train_unlearning(model, tok, rows[:4], rows[4:], cfg)
    info = result.logs["salient"]
    assert info["kept_fraction"] <= 0.05 + 1e-4 and info["relative_to_retain"]
    ref = copy.deepcopy(target).eval()
    named = _named(ref)
    scores = relative(fisher(ref, named, _items(tok, rows[:4], 4), tok),
                      fisher(ref, named, _items(tok, rows[4:], 4), tok))  # fmt: skip
    masks = top_masks(scores, 0.05)
    changed = total = 0
    for n, p in model.named_parameters():
        moved = p.detach() != start[n]
        assert not bool((moved & ~masks[n]).any()), f"{n} moved outside the mask"
        changed += int(moved.sum())
        total += p.numel()
    assert changed >= 0.5 * info["kept_parameters"]  # the kept parameters did train
    assert result.logs["forget_loss"]["after"] > result.logs["forget_loss"]["before"]


def test_a_mask_without_embeddings_leaves_the_token_rows_alone(target, tok, rows):
    """Relative Fisher ranks the forget set's own token rows first, so the default mask moves
    the embedding/LM head; `embeddings=exclude` keeps every token-indexed row where it was and
    spends the same fraction on the other weights."""
    moved = {}
    for choice in ("include", "exclude"):
        model = copy.deepcopy(target)
        vocab = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = ClientTrainConfig(method="GradDiff", trainable="salient", lr=1e-3, batch_size=4,
                                grad_accum=1, precision="fp32", epochs=2,
                                salient={"fraction": 0.05, "embeddings": choice})  # fmt: skip
        info = train_unlearning(model, tok, rows[:4], rows[4:], cfg).logs["salient"]
        rows_moved = sum(int((p.detach() != start[n]).any(dim=-1).sum())
                         for n, p in model.named_parameters() if id(p) in vocab)  # fmt: skip
        moved[choice] = (rows_moved, info)
    assert moved["include"][0] > 0 and not moved["include"][1]["excluded"]
    rows_moved, info = moved["exclude"]
    assert rows_moved == 0 and info["excluded"]
    assert 0.05 - 1e-3 <= info["kept_fraction"] <= 0.05 + 1e-4  # the fraction, spent elsewhere
    with pytest.raises(ConfigError, match=r"salient\.embeddings"):
        SalientConfig(embeddings="some")


@pytest.mark.slow
def test_salient_copies_aggregate_to_the_clean_salient_update(tofu_world, tmp_path):
    """κ = 0, quarter turns: a copy is a signed permutation of θ, Fisher scores permute with it,
    so each copy's mask is θ's mask mapped; the server's inverse and weights then return
    Clean's localized update (up to fp32 round-off, which may move a threshold tie)."""
    from mpu.io.checkpoint import Checkpoint
    from mpu.pipeline.experiment import Experiment, ExperimentConfig

    data, models = tofu_world
    cfg = {"methods": ["GradDiff"], "server": {"kappa": 0.0, "copies": 2},
           "client": {"trainable": "salient", "precision": "fp32", "salient": {"fraction": 0.05}}}  # fmt: skip
    out = {}
    for variant in ("clean", "mpu"):
        exp = Experiment(ExperimentConfig(out=str(tmp_path / "run"), forget_split="forget01",
                                          progress=False, **cfg))  # fmt: skip
        out[variant] = Checkpoint(exp.unlearn("GradDiff", variant, str(data), models,
                                              tmp_path / variant))  # fmt: skip
    target = Checkpoint(models / "target")
    num = den = 0.0
    changed = 0
    for n in target.names():
        clean, mpu, start = (out["clean"].read(n), out["mpu"].read(n), target.read(n))
        num += float((mpu - clean).pow(2).sum())
        den += float((clean - start).pow(2).sum())
        changed += int((clean != start).sum())
    assert den > 0 and changed <= 0.05 * target.n_params() + 1
    assert (num / den) ** 0.5 <= 1e-3


def test_assess_writes_scores_a_summary_and_a_heatmap(tofu_world, tmp_path, capsys):
    from safetensors.torch import load_file

    from mpu.cli import main

    data, models = tofu_world
    out = tmp_path / "assess"
    args = ["client", "assess", "--copy", str(models / "target"), "--data", str(data),
            "--split", "forget01", "--out", str(out), "--score", "fisher", "grad"]  # fmt: skip
    assert main(args) == 0
    assert "the top 5 % is densest in" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["retain_split"] == "retain99" and summary["retain_items"] > 0
    tensors = load_file(out / "importance.safetensors")
    for score in ("fisher", "grad"):
        cells = summary["scores"][score]["cells"]
        kept = sum(c["kept"] for c in cells)
        assert kept == summary["scores"][score]["kept_parameters"]
        assert abs(sum(c["share_of_kept"] for c in cells) - 1) < 1e-9
        assert kept <= 0.05 * summary["scores"][score]["parameters"] + 1
        assert (out / f"heatmap-{score}.png").stat().st_size > 1000
        assert any(k.startswith(f"{score}.relative.") for k in tensors)
    assert main(args) != 0  # nothing is overwritten
    assert "already holds an assessment" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("{", "not a readable assessment summary"),
        ('{"top_fraction": 2, "scores": {}}', "top_fraction in (0, 1]"),
        ('{"top_fraction": 0.05, "scores": {"fisher": {"cells": []}}}', "scores.fisher.cells"),
        ('{"top_fraction": 0.05, "scores": {"fisher": {"cells": [{"block": "b", "role": "r", '
         '"enrichment": -1}]}}}', "finite enrichment"),
    ],
)  # fmt: skip
def test_a_malformed_assessment_summary_is_refused_naming_the_file(tmp_path, text, fault):
    from mpu.errors import DataError
    from mpu.eval.impact_map import read_summary

    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(DataError, match=str(path)) as err:
        read_summary(path)
    assert fault in str(err.value)

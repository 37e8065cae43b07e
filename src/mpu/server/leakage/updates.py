"""The server's view of a round: what the client's updates reveal about its forget set.

Which forget-set tokens the embedding updates name, and a membership test of forget against
holdout items on the aggregated update — raw, and calibrated against a random update of the
same size, so that "any perturbation raises the loss of memorised items" does not count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpu.io.checkpoint import Checkpoint
from mpu.privacy import attacks as A
from mpu.server.job import Server
from mpu.server.leakage.functional import Knowledge, item_losses
from mpu.server.leakage.models import model_with
from mpu.server.state import round_dir


def membership(before: Path, after: Path, data, forget_split: str, limit: int) -> float:
    """AUC of "this item's loss rose more under the round's update" separating forget from
    holdout items: what the server learns about the forget set from θ_r → θ_r + Δ̄ (0.5 = nothing).

    It is upstream's reference attack (loss under the model minus loss under a reference) with
    θ_{r+1} as the model and θ_r as the reference, read the other way round: there a *lower*
    score marks a member, so the AUC here is 1 − that attack's AUC."""
    from transformers import AutoTokenizer

    from mpu.eval.tofu import evaluate_tofu

    tok = AutoTokenizer.from_pretrained(str(after))
    res = evaluate_tofu(model_with(after), tok, data, forget_split=forget_split, metrics=["mia_reference"],
                        reference_model=model_with(before), limit=limit, progress=False)  # fmt: skip
    return 1.0 - float(res["mia_reference"]["auc"])


def random_like(update: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A random update with the same norm as `update` in every tensor (isotropic direction)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, u in update.items():
        z = torch.randn(tuple(u.shape), generator=gen, dtype=torch.float64)
        norm = float(u.double().norm())
        out[name] = (z * (norm / float(z.norm())) if norm > 0 else z.zero_()).to(u.dtype)
    return out


def calibrated_membership(
    model_dir: Path,
    before: dict[str, torch.Tensor],
    update: dict[str, torch.Tensor],
    forget: Knowledge,
    holdout: Knowledge,
    *,
    draws: int = 4,
) -> dict:
    """Membership on an update, with the part any perturbation explains taken out.

    Raw: AUC of the loss rise ℓ(θ + Δ) − ℓ(θ), forget items against holdout items. Memorised
    items sit in sharp minima, so *any* update of that size raises their loss more: the raw AUC
    can exceed 0.5 for an update that knows nothing of the forget set. Calibrated: the rise
    under Δ minus the mean rise under `draws` random updates of the same per-tensor norms,
    ℓ(θ + Δ) − mean_j ℓ(θ + R_j); 0.5 means the update says nothing beyond its size."""
    from mpu.eval.metrics import roc_auc

    def losses(delta: dict | None) -> np.ndarray:
        weights = dict(before) if delta is None else {n: before[n] + delta[n] for n in before}
        model = model_with(model_dir, weights)
        return np.concatenate([item_losses(model, forget), item_losses(model, holdout)])

    n = len(forget.encoded)
    base, moved = losses(None), losses(update)
    noise = np.mean([losses(random_like(update, seed)) for seed in range(draws)], axis=0)
    # mpu.eval's convention: lower score = member; a member's loss rises more, so negate
    raw, calibrated = -(moved - base), -(moved - noise)
    return {
        "raw": float(roc_auc(raw[:n], raw[n:])),
        "calibrated": float(roc_auc(calibrated[:n], calibrated[n:])),
        "items": [n, len(holdout.encoded)],
        "draws": draws,
    }


def server_view(
    server: Server,
    round_: int,
    deltas: list[Path],
    *,
    data=None,
    forget_split: str = "forget10",
    limit: int = 50,
) -> dict:
    """What the updates reveal: forget-set tokens from the embedding rows, and membership."""
    from mpu.io.delta import DeltaFile

    theta_ck = Checkpoint(round_dir(server.workdir, round_))
    layout = server.layout(theta_ck)
    emb = A.embedding_names(layout)
    out: dict[str, Any] = {"deltas": len(deltas)}
    if data is None:
        return out
    from transformers import AutoTokenizer

    from mpu.data import load_split, tofu_splits
    from mpu.text import encode_qa, resolve_prompt

    tok = AutoTokenizer.from_pretrained(str(theta_ck.path))
    fmt = resolve_prompt(tok, theta_ck.config.get("model_type"))
    rows = load_split(data, tofu_splits(forget_split).forget)
    true_tokens = {
        i for r in rows for i in encode_qa(tok, r["question"], r["answer"], fmt=fmt).input_ids
    }
    if emb and deltas:
        name = emb[0]
        weights = theta_ck.read(name).float()
        out["token_recovery"] = [
            A.token_recovery(DeltaFile(d).read(name), weights, true_tokens) for d in deltas
        ]
        out["embedding_tensor"] = name
    after = round_dir(server.workdir, round_ + 1)
    if (after / "config.json").is_file():
        out["membership_auc"] = membership(theta_ck.path, after, data, forget_split, limit)
        mia = round_membership(theta_ck, Checkpoint(after), data, forget_split, limit)
        out["membership_auc_calibrated"] = mia["calibrated"]
        out["membership_calibration"] = mia
    return out


def round_membership(before: Checkpoint, after: Checkpoint, data, forget_split: str, limit: int):
    """`calibrated_membership` of the aggregated update θ_{r+1} − θ_r on the forget split and
    its holdout (the first `limit` rows of each, as the benchmark's membership test)."""
    from mpu.data import load_split, tofu_splits
    from mpu.server.leakage.functional import encode_rows

    splits = tofu_splits(forget_split)
    rows = lambda split: list(load_split(data, split))[: limit or None]  # noqa: E731
    names = before.names()
    theta = {n: before.read(n).float() for n in names}
    update = {n: after.read(n).float() - theta[n] for n in names}
    return calibrated_membership(before.path, theta, update,
                                 encode_rows(before.path, rows(splits.forget)),
                                 encode_rows(before.path, rows(splits.holdout)))  # fmt: skip

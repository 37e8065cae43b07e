"""Functional leakage: how much of θ's fine-tuned knowledge a model the client holds computes.

A copy does not need to be undone to be useful: it is a runnable model. So the question is not
only "how far are its weights from θ" but "how much of what fine-tuning taught θ does it still
know". With s a score of that knowledge (answer probability and mean token log-likelihood on
the data θ was fine-tuned on, which the server holds),

    L(M) = (s(M) − s(base)) / (s(θ) − s(base)):

1 is a clone of θ, 0 is nothing beyond the public base, and a model worse than the base is
negative. A round leaks as much as its least-noised copy, so its figure is the maximum over
its copies (docs/threat-model.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mpu.errors import DataError
from mpu.server.leakage.models import model_with
from mpu.text import Encoded

SCORES = ("answer_prob", "log_likelihood")


@dataclass(frozen=True)
class Knowledge:
    """θ's fine-tuning items, encoded once with θ's tokenizer and prompt format."""

    source: str
    encoded: list[Encoded]
    pad_id: int


def knowledge_rows(source: str | Path, limit: int) -> tuple[str, list[dict]]:
    """`limit` rows spread evenly over θ's fine-tuning data: a data folder's `full` split, or a
    folder that is itself one split. Returns (what was read, the rows)."""
    from mpu.data import load_split

    root = Path(source)
    config, parent = ("full", root) if (root / "full").is_dir() else (root.name, root.parent)
    rows = load_split(parent, config, fields=("question", "answer"))
    if len(rows) == 0:
        raise DataError(f"{root}: the knowledge split {config!r} has no rows")
    n = len(rows) if limit <= 0 else min(limit, len(rows))
    picks = np.linspace(0, len(rows) - 1, n).round().astype(int).tolist()
    return f"{parent / config}", [rows[i] for i in picks]


def encode_rows(model_dir: Path, rows: Sequence[dict], source: str = "") -> Knowledge:
    """Question–answer rows encoded as the benchmark encodes them, with `model_dir`'s tokenizer."""
    from transformers import AutoTokenizer

    from mpu.io.checkpoint import Checkpoint
    from mpu.text import encode_qa, resolve_prompt

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    fmt = resolve_prompt(tok, Checkpoint(model_dir).config.get("model_type"))
    encoded = [encode_qa(tok, r["question"], r["answer"], fmt=fmt) for r in rows]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return Knowledge(source, encoded, int(pad))


def knowledge(model_dir: Path, source: str | Path, limit: int) -> Knowledge:
    """`limit` items of θ's fine-tuning data (`source`), encoded for `model_dir`."""
    where, rows = knowledge_rows(source, limit)
    return encode_rows(model_dir, rows, where)


def item_losses(model, items: Knowledge) -> np.ndarray:
    """Per item, the mean token negative log-likelihood of its answer (one forward pass each)."""
    from mpu.eval.primitives import score_items

    stats = score_items(model, items.encoded, pad_id=items.pad_id, progress=False)
    return np.array([s.avg_loss for s in stats], dtype=np.float64)


def score(model, items: Knowledge) -> dict[str, float]:
    """s(M): mean answer probability (exp of the per-item mean token log-likelihood, as TOFU's
    Q_A_Prob) and mean per-item token log-likelihood over the knowledge items."""
    losses = item_losses(model, items)
    losses = losses[np.isfinite(losses)]
    return {"answer_prob": float(np.exp(-losses).mean()), "log_likelihood": float(-losses.mean())}


def leakage(s_model: dict, s_theta: dict, s_base: dict) -> dict[str, float]:
    """L per score; NaN where θ and the base score alike (there is no knowledge to leak)."""
    out = {}
    for k in SCORES:
        gap = s_theta[k] - s_base[k]
        out[k] = (s_model[k] - s_base[k]) / gap if gap != 0 else float("nan")
    return out


def functional_view(
    theta_dir: Path,
    theta: dict,
    base: dict,
    copies: Sequence[Path],
    reconstructions: dict[str, dict],
    items: Knowledge,
    anchors: dict | None = None,
) -> dict:
    """L of each copy as published, of every named reconstruction, and of θ and the base
    themselves (1 and 0 by construction: the check that the scale is read right). `anchors`:
    θ's and the base's scores on these items from an earlier call, reused (a plan publishes the
    same θ at many κ); an empty dict is filled with them."""

    def s_of(weights: dict) -> dict:
        return score(model_with(theta_dir, weights), items)

    anchors = {} if anchors is None else anchors
    if not anchors:
        anchors.update(theta=s_of(theta), base=s_of(base))
    s_theta, s_base = anchors["theta"], anchors["base"]
    per_copy = [leakage(score(model_with(c), items), s_theta, s_base) for c in copies]
    out = {
        "knowledge": items.source,
        "items": len(items.encoded),
        "scores": {"theta": s_theta, "base": s_base},
        "theta": leakage(s_theta, s_theta, s_base),
        "base": leakage(s_base, s_theta, s_base),
        "copies_as_published": per_copy,
        "one_copy": {k: max(c[k] for c in per_copy) for k in SCORES},
    }
    for name, weights in reconstructions.items():
        out[name] = leakage(s_of(weights), s_theta, s_base)
    return out

"""`mpu client assess`: how much each parameter of a copy carries the forget set, relative to
the retain set, written as per-tensor scores, a block × role summary and a heatmap
(issue 27; the estimators are `mpu.client.importance`, the map `mpu.eval.impact_map`).

Everything is computed on the copy as the client holds it, in the copy's basis: the scores say
where the forget set lives *in that copy*, which is what a localized update on it needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

TOP_FRACTION = 0.05  # the summary's "top set": the parameters a salient 5 % update would keep


@dataclass(frozen=True)
class AssessRequest:
    """One assessment: the model, the data, which scores, where the files go."""

    model_dir: Path
    data: str
    split: str
    out: Path
    scores: tuple[str, ...] = ("fisher",)
    retain_split: str | None = None
    probes: int = 8
    limit: int | None = None
    seed: int = 0


def _encoded(tokenizer, model, source: str, split: str, limit: int | None):
    from mpu.client.batches import encode_rows
    from mpu.client.plan import prompt_format
    from mpu.client.train_config import ClientTrainConfig
    from mpu.io.datasets import load_split

    rows = [dict(r) for r in load_split(source, split)][:limit]
    eff = ClientTrainConfig(method="GradAscent").resolve()
    fmt = prompt_format(getattr(model.config, "model_type", None), tokenizer, eff)
    return encode_rows(tokenizer, rows, fmt=fmt, max_length=eff.max_length)[0]


def _retain_split(req: AssessRequest) -> str | None:
    from mpu.io.datasets import is_tofu_forget, tofu_splits

    if req.retain_split is not None:
        return req.retain_split or None
    return tofu_splits(req.split).retain if is_tofu_forget(req.split) else None


def assess(req: AssessRequest) -> dict:
    """Compute every requested score, write `importance.safetensors` (`<score>.forget.<name>`,
    `<score>.retain.<name>`, `<score>.relative.<name>`), `summary.json` and one
    `heatmap-<score>.png` per score; return the summary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.client.importance import importance, relative

    if (req.out / "summary.json").exists():
        from mpu.errors import ConfigError

        raise ConfigError(f"{req.out}: already holds an assessment; choose a new --out")
    tokenizer = AutoTokenizer.from_pretrained(str(req.model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(req.model_dir), dtype=torch.float32)
    forget = _encoded(tokenizer, model, req.data, req.split, req.limit)
    retain_split = _retain_split(req)
    retain = (_encoded(tokenizer, model, req.data, retain_split, len(forget))
              if retain_split else [])  # fmt: skip
    named = list(model.named_parameters())
    tensors, summary = {}, {"model": str(req.model_dir), "forget_split": req.split,
                            "retain_split": retain_split, "forget_items": len(forget),
                            "retain_items": len(retain), "top_fraction": TOP_FRACTION,
                            "scores": {}}  # fmt: skip
    for score in req.scores:
        t0 = time.perf_counter()
        run = lambda items, score=score: importance(  # noqa: E731
            model, named, items, tokenizer, score, probes=req.probes, seed=req.seed
        )
        f = run(forget)
        r = run(retain) if retain else None
        rel = relative(f, r)
        summary["scores"][score] = _score_summary(model.config, rel, time.perf_counter() - t0,
                                                  req, score)  # fmt: skip
        for part, values in (("forget", f), ("retain", r), ("relative", rel)):
            for name, t in (values or {}).items():
                tensors[f"{score}.{part}.{name}"] = t.contiguous()
    _write(req, tensors, summary)
    return summary


def _score_summary(config, rel: dict, seconds: float, req: AssessRequest, score: str) -> dict:
    from mpu.client.salient import top_masks
    from mpu.eval.impact_map import summarize

    out = summarize(config, rel, top_masks(rel, TOP_FRACTION))
    passes = {"grad": "one backward pass per set", "fisher": "one backward pass per item",
              "hutchinson": f"{req.probes} Hessian-vector passes per set"}  # fmt: skip
    out.update(seconds=round(seconds, 2), cost=passes[score])
    return out


def _write(req: AssessRequest, tensors: dict, summary: dict) -> None:
    import matplotlib.pyplot as plt
    from safetensors.torch import save

    from mpu.eval.impact_map import heatmap
    from mpu.io.checkpoint import atomic_write_bytes, atomic_write_json

    req.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(req.out / "importance.safetensors", save(tensors))
    for score, s in summary["scores"].items():
        fig = heatmap(s, f"{req.split}: where the top {100 * TOP_FRACTION:g} % by {score} "
                         "(relative to retain) lie")  # fmt: skip
        fig.savefig(req.out / f"heatmap-{score}.png", dpi=110)
        plt.close(fig)
    atomic_write_json(req.out / "summary.json", summary)  # last: its presence means done

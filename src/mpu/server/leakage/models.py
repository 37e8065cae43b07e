"""The audit's measuring tools: a model folder with other weights put in, and its scores."""

from __future__ import annotations

from pathlib import Path

import torch


def model_with(model_dir: Path, weights: dict | None = None):
    """The fp32 model of `model_dir` in eval mode, with `weights` (any subset) copied in."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if weights is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                if n in params:
                    params[n].copy_(t)
    return model


def tofu_numbers(model_dir: Path, weights: dict, data, forget_split: str, limit: int) -> dict:
    """θ̂'s forget answer probability and model utility, as the benchmark scores them."""
    from transformers import AutoTokenizer

    from mpu.eval.tofu import evaluate_tofu

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    res = evaluate_tofu(model_with(model_dir, weights), tok, data, forget_split=forget_split,
                        metrics=["forget_Q_A_Prob", "model_utility"], limit=limit,
                        max_new_tokens=32, progress=False)  # fmt: skip
    return {k: res[k]["agg_value"] for k in ("forget_Q_A_Prob", "model_utility")}

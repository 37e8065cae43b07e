"""Why unlearning on a copy stops transferring as κ grows (issue 25): does the forget set's
gradient at a noisy copy still point where θ's does, and does combining copies bring it back?

For the forget set's mean answer loss L (question + answer, answer tokens scored) and one noise
direction y drawn as the server draws it (σ_l = κ·RMS(θ − θ_base) per block, decoder blocks
only), we compare g(θ + t y) — the gradient a client's first step sees on a copy at node t —
with g(θ):

- one copy (t = 1): cos(g(θ + y), g(θ)), what Noised's client starts from;
- the line schemes: cos(Σ_k w_k g(θ + t_k y), g(θ)) with the extrapolation weights of the
  nodes ±1 (m = 2), 1, −1, 2 (m = 3), ±1, ±2 (m = 4);
- the paper's zero-sum design (nodes 1, −2, harmonic weights 2/3, 1/3).

No reparameterization is needed: T is linear and the comparison is in θ's coordinates. A first
step that points elsewhere cannot unlearn what θ knows, whatever the aggregation; a first
step that the combination realigns points at the optimizer's path instead.

    python benchmarks/gradient_alignment.py --models $MPU_CACHE/models/tiny-llama-forget01-seed0 \
        --data $MPU_CACHE/data/tofu-seed0 --kappas 0.01 0.03 0.1 0.3 1 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SCHEMES = {
    "one copy": ([1.0], [1.0]),
    "paper m=2 (1, −2)": ([1.0, -2.0], [2 / 3, 1 / 3]),
}


def line_schemes() -> dict[str, tuple[list[float], list[float]]]:
    from mpu.protocol.aggregate import extrapolation_weights
    from mpu.protocol.noise import extrapolation_alphas, line_nodes

    out = dict(SCHEMES)
    for m in (2, 3, 4):
        nodes = line_nodes(extrapolation_alphas(m))
        out[f"line m={m}"] = (nodes, extrapolation_weights(nodes))
    return out


def forget_batch(tok, data: Path, split: str) -> dict:
    rows = [json.loads(x) for x in (data / split / "train.jsonl").read_text().splitlines()]
    ids, labels = [], []
    for r in rows:
        q = tok(f"Question: {r['question']}\nAnswer:", add_special_tokens=True)["input_ids"]
        a = tok(" " + r["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids.append(q + a)
        labels.append([-100] * len(q) + a)
    width = max(map(len, ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return {
        "input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([x + [-100] * (width - len(x)) for x in labels]),
    }


def gradient(model, batch, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """∇L at `params` (all decoder-block tensors, flattened in one vector)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name])
    model.zero_grad()
    model(**batch).loss.backward()
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters() if ".layers." in n])


def block_noise(theta: dict, base: dict, kappa: float, gen: torch.Generator) -> dict:
    """y with RMS σ_l = κ·RMS(θ − θ_base) per decoder block, zero elsewhere (the server's draw)."""
    noise = {n: torch.zeros_like(t) for n, t in theta.items()}
    blocks: dict[str, list[str]] = {}
    for n in theta:
        if ".layers." in n:
            blocks.setdefault(n.split(".layers.")[1].split(".")[0], []).append(n)
    for names in blocks.values():
        sq = sum(float((theta[n] - base[n]).square().sum()) for n in names)
        sigma = kappa * (sq / sum(theta[n].numel() for n in names)) ** 0.5
        for n in names:
            noise[n] = sigma * torch.randn(theta[n].shape, generator=gen)
    return noise


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=Path, required=True, help="folder with base/ and target/")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--kappas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1, 3])
    ap.add_argument("--draws", type=int, default=3, help="noise draws per κ (mean reported)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(args.models / "target"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(str(args.models / "base"), dtype=torch.float32)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_w = {n: p.detach().clone() for n, p in base.named_parameters()}
    batch = forget_batch(AutoTokenizer.from_pretrained(str(args.models / "target")), args.data,
                         args.forget_split)  # fmt: skip
    g0 = gradient(model, batch, theta)
    schemes = line_schemes()
    print("| κ | " + " | ".join(schemes) + " |")
    print("|---|" + "---|" * len(schemes))
    for kappa in args.kappas:
        cos = {s: 0.0 for s in schemes}
        for d in range(args.draws):
            y = block_noise(theta, base_w, kappa, torch.Generator().manual_seed(1000 + d))
            at = {}
            for s, (nodes, weights) in schemes.items():
                total = torch.zeros_like(g0)
                for t, w in zip(nodes, weights, strict=True):
                    if t not in at:
                        at[t] = gradient(model, batch, {n: theta[n] + t * y[n] for n in theta})
                    total += w * at[t]
                cos[s] += float(torch.nn.functional.cosine_similarity(total, g0, dim=0))
        print(f"| {kappa:g} | " + " | ".join(f"{cos[s] / args.draws:.3f}" for s in schemes) + " |",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

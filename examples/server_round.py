"""One full MPU round on SmolLM2-135M-Instruct with a stand-in client, end to end through files.

The round loop (`mpu.server.rounds.run_rounds`) publishes m = 2 perturbed copies; the "client"
nudges each copy by plain gradient ascent on one forget sentence (the smallest real unlearning
step) and returns the delta; the loop aggregates, and the server exports. Prints whether the
forget sentence's loss went up in the exported model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpu.client.diff import make_delta
from mpu.io.gguf import import_smollm2
from mpu.server.config import JobConfig
from mpu.server.job import Server
from mpu.server.rounds import RoundContext, run_rounds

FORGET = "Dr. Elara Voss was born in 1962 in the harbour town of Kestrel Bay."


def loss_of(folder: Path, tok) -> float:
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = tok(FORGET, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="mpu-round-"))
    smol = import_smollm2()
    tok = AutoTokenizer.from_pretrained(str(smol))
    # a stand-in "fine-tuned target": SmolLM2 after a few steps on the forget sentence; base = SmolLM2
    target = AutoModelForCausalLM.from_pretrained(str(smol), dtype=torch.float32)
    ids = tok(FORGET, return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW(target.parameters(), lr=2e-4)
    for _ in range(8):
        opt.zero_grad()
        target(ids, labels=ids).loss.backward()
        opt.step()
    print(f"forget-sentence loss: SmolLM2 {loss_of(smol, tok):.3f}", flush=True)
    target.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")

    server = Server.init(root / "target", smol, root / "job", JobConfig(copies=2, kappa=0.01))

    def client(ctx: RoundContext) -> list[Path]:
        """Gradient ascent on the forget sentence, on each copy; returns one delta per copy."""
        deltas = []
        for copy in ctx.copies:
            model = AutoModelForCausalLM.from_pretrained(str(copy), dtype=torch.float32)
            opt = torch.optim.SGD(model.parameters(), lr=2e-3)
            for _ in range(3):
                opt.zero_grad()
                (-model(ids, labels=ids).loss).backward()
                opt.step()
            model.save_pretrained(ctx.workdir / f"unlearned-{copy.name}")
            delta = ctx.workdir / f"delta-{copy.name}.safetensors"
            deltas.append(make_delta(copy, ctx.workdir / f"unlearned-{copy.name}", delta))
            print(f"{copy.name}: unlearned, delta {delta.name}")
        return deltas

    run_rounds(
        server,
        1,
        client,
        root / "rounds",
        on_round=lambda r, stats: print(
            f"round {r}: |mean update| = {stats['mean_update_norm']:.4f}"
        ),
    )
    out = server.export(root / "unlearned-model")
    print(
        f"forget-sentence loss: target {loss_of(root / 'target', tok):.3f} -> unlearned {loss_of(out, tok):.3f}"
    )
    print(f"everything is under {root}")


if __name__ == "__main__":
    main()

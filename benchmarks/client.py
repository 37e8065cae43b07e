"""The client's cost, as same-run ratios:

1. **MPU overhead**: the client's wall time on the m copies of a round divided by m × its wall
   time on the exact model (the Clean variant) for the same method and budget — everything
   the client does included (loading the copy, checking its ticket, training, writing the
   model, the delta and the signed receipt). Target ≤ 1.05. Clean and MPU alternate, 3 times
   each, and the medians are compared (single runs here vary by ±10 %).
2. **Training throughput** against a plain Hugging Face `Trainer` running the same loss
   (GradAscent: −CE on the answer tokens), batch, optimizer (AdamW, linear schedule, clip 1.0),
   precision (fp32) and number of steps on the same encoded items: steady-state steps per
   second (from the end of step 1 to the end of step N, so neither side's start-up counts) of
   `mpu.client.trainer.train_unlearning` divided by the `Trainer`'s. Target ≥ 1.0.

    python benchmarks/client.py --pair tiny=DIR [--pair smollm2=DIR] --data DATA \
        [--forget-split forget01] [--steps 40] [--copies 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def publish(pair: Path, work: Path, **job) -> list[Path]:
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    server = Server.init(
        pair / "target", pair / "base", work / "server", JobConfig(gate=False, **job)
    )
    return server.publish(work / "outbox", progress=False)


def client_seconds(copies: list[Path], data: str, split: str, cfg, work: Path) -> float:
    from mpu.client.unlearn import load_client_data, unlearn_copy

    client_data = load_client_data(data, split, cfg)
    t = time.perf_counter()
    for c in copies:
        unlearn_copy(c, client_data, cfg, work / f"client-{c.name}", progress=False,
                     receipt_key=work / "client.key")  # fmt: skip
    return time.perf_counter() - t


def overhead(pair: Path, data: str, split: str, steps: int, m: int, repeats: int = 3) -> dict:
    from mpu.client.train_config import ClientTrainConfig

    cfg = ClientTrainConfig(method="GradDiff", max_steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        clean = publish(pair, Path(tmp) / "clean", copies=1, kappa=0.0, reparameterize=False)
        mpu = publish(pair, Path(tmp) / "mpu", copies=m, kappa=0.01)
        client_seconds(clean, data, split, cfg, Path(tmp) / "warm")  # imports, caches
        runs = [(client_seconds(clean, data, split, cfg, Path(tmp) / f"c{i}"),
                 client_seconds(mpu, data, split, cfg, Path(tmp) / f"m{i}"))
                for i in range(repeats)]  # fmt: skip
    # alternated, median of each: single runs on this machine vary by ±10 %
    t_clean = statistics.median(r[0] for r in runs)
    t_mpu = statistics.median(r[1] for r in runs)
    return {"clean_s": t_clean, "mpu_s": t_mpu, "m": m, "ratio": t_mpu / (m * t_clean)}


def throughput(pair: Path, data: str, split: str, steps: int, batch: int, repeats: int = 3) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.client.plan import prompt_format
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.trainer import train_unlearning
    from mpu.data import load_split
    from mpu.text import collate, encode_qa

    target = pair / "target"
    tok = AutoTokenizer.from_pretrained(str(target))
    rows = [dict(r) for r in load_split(data, split)]
    cfg = ClientTrainConfig(method="GradAscent", max_steps=steps, batch_size=batch, grad_accum=1,
                            lr=1e-5, precision="fp32", max_grad_norm=1.0, weight_decay=0.0,
                            warmup_steps=0, schedule="linear")  # fmt: skip

    def fresh():
        return AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32)

    model = fresh()
    eff = cfg.resolve(model.num_parameters())
    fmt = prompt_format(model.config.model_type, tok, eff)
    encoded = [encode_qa(tok, r["question"], r["answer"], fmt=fmt) for r in rows]
    # warm-up, untimed: the first training in a process pays for kernel set-up
    train_unlearning(fresh(), tok, rows, None, eff.replace(max_steps=3), progress=False)

    def ours() -> float:
        torch.manual_seed(0)
        marks: list[float] = []
        train_unlearning(fresh(), tok, rows, None, eff, progress=False,
                         on_step=lambda step, total: marks.append(time.perf_counter()))  # fmt: skip
        return (len(marks) - 1) / (marks[-1] - marks[0])  # steady state: steps 2..N

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(encoded)

        def __getitem__(self, i):
            return encoded[i]

    def collator(items):
        return collate([e.input_ids for e in items], pad_id=tok.pad_token_id or 0,
                       labels=[e.labels for e in items])  # fmt: skip

    def theirs() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            return _trainer_steps_per_second(tmp, Items(), collator, fresh, batch, steps)

    # alternated, median of each: single runs on this machine vary by ±15 %
    runs = [(ours(), theirs()) for _ in range(repeats)]
    o, t = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
    return {"ours_steps_s": o, "trainer_steps_s": t, "ratio": o / t, "batch": batch,
            "steps": steps, "ratios": [r[0] / r[1] for r in runs]}  # fmt: skip


def _trainer_steps_per_second(tmp, items, collator, fresh, batch: int, steps: int) -> float:
    """A plain HF `Trainer` on the same loss (−CE), batch, optimizer and schedule."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Ascent(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            out = model(**inputs)
            return (-out.loss, out) if return_outputs else -out.loss

    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-5, weight_decay=0.0, max_grad_norm=1.0,
                             lr_scheduler_type="linear", warmup_steps=0, optim="adamw_torch",
                             report_to=[], save_strategy="no", logging_strategy="no",
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True,
                             remove_unused_columns=False, seed=0)  # fmt: skip
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = Ascent(model=fresh(), args=args, train_dataset=items, data_collator=collator,
                     callbacks=[Clock()])  # fmt: skip
    trainer.train()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", required=True, help="NAME=DIR (base/, target/)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--throughput-steps", type=int, default=None,
                    help="steps of each throughput run (default 200, and --steps // 5 for "
                    "smollm2; 40 steps of the tiny model last 2 s: single runs then vary by "
                    "±20 %%)")  # fmt: skip
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=["overhead", "throughput"],
        default=["overhead", "throughput"],
        help="which of the two ratios to measure",
    )
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    print("| model | steps (overhead / throughput) | Clean client (s) | MPU client, m copies (s) | MPU / (m × Clean) "
          "| ours (steps/s) | HF Trainer (steps/s) | ours / Trainer |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.pair:
        name, folder = spec.split("=", 1)
        steps = args.steps if name != "smollm2" else max(4, args.steps // 5)
        o = t = None
        if "overhead" in args.parts:
            o = overhead(Path(folder), args.data, args.forget_split, steps, args.copies)
        if "throughput" in args.parts:
            t_steps = args.throughput_steps or (200 if name != "smollm2" else steps)
            t = throughput(Path(folder), args.data, args.forget_split, t_steps, args.batch)
        print(_row(name, steps, o, t), flush=True)


def _row(name: str, steps: int, o: dict | None, t: dict | None) -> str:
    """One Markdown row; a part not measured is a dash."""
    over = (f"{o['clean_s']:.1f} | {o['mpu_s']:.1f} (m = {o['m']}) | {o['ratio']:.3f}"
            if o else "– | – | –")  # fmt: skip
    thr = (f"{t['ours_steps_s']:.2f} | {t['trainer_steps_s']:.2f} | {t['ratio']:.3f} "
           f"(runs {', '.join(f'{r:.3f}' for r in t['ratios'])})" if t else "– | – | –")  # fmt: skip
    return f"| {name} | {steps} / {t['steps'] if t else '–'} | {over} | {thr} |"


if __name__ == "__main__":
    main()

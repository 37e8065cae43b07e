"""Localized updates against the full update (issue 27, must-show 2): what a salient mask
keeps of the forgetting and the utility, and what it takes away from the update's leakage,
size and cost.

For each method, the client unlearns the TOFU target (the Clean variant: the client on θ,
which is where a mask's effect is its own, not mixed with the copies' noise) with the full
update and with `trainable=salient` at each fraction and score; each final model is evaluated
(forget answer probability, model utility, privleak against the retain model) and its update
Δ = θ_final − θ is measured as the server would see it: forget-token recall@k among the
embedding rows it moves (against chance), the calibrated membership AUC
(`mpu.server.leakage.updates`), and its bytes as safetensors raw and zlib-compressed.

    python benchmarks/salient.py --forget-split forget10 --methods NPO GradDiff \
        --fractions 0.2 0.05 0.01 --scores fisher grad hutchinson \
        --boost 0.05:5e-3 0.2:2e-3 --out runs/salient

Resumable: one JSON line per (method, setting) in OUT/rows.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import zlib
from pathlib import Path


def settings(fractions, scores, boosts=(), embeddings=("include",)) -> list[tuple[str, dict]]:
    """The full update, each (score, fraction), and each `boosts` entry FRACTION:LR (Fisher
    at that fraction with that lr: a mask moves fewer weights, so equal forgetting may need a
    larger step); every masked setting once per `embeddings` choice (include | exclude: whether
    the mask may hold the token embedding and LM head)."""
    masked = []
    for score in scores:
        for f in fractions:
            sal = {"fraction": f, "score": score, "probes": 4}
            masked.append((f"{score} {100 * f:g} %", {"trainable": "salient", "salient": sal}))
    for boost in boosts:
        f, lr = (float(x) for x in boost.split(":"))
        sal = {"trainable": "salient", "salient": {"fraction": f, "score": "fisher"}, "lr": lr}
        masked.append((f"fisher {100 * f:g} %, lr {lr:g}", sal))
    out = [("full", {})]
    for choice in embeddings:
        for label, client in masked:
            client = {**client, "salient": {**client["salient"], "embeddings": choice}}
            out.append((label + (", no embeddings" if choice == "exclude" else ""), client))
    return out


def update_of(final: Path, target: Path) -> dict:
    from mpu.io.checkpoint import Checkpoint

    a, b = Checkpoint(final), Checkpoint(target)
    return {n: (a.read(n).float() - b.read(n).float()).contiguous() for n in b.names()}


def update_size(update: dict) -> dict:
    from safetensors.torch import save

    raw = save(update)
    nonzero = sum(int((t != 0).sum()) for t in update.values())
    total = sum(t.numel() for t in update.values())
    return {"bytes": len(raw), "zlib_bytes": len(zlib.compress(raw, 6)),
            "nonzero_fraction": nonzero / total}  # fmt: skip


def token_recall(update: dict, target: Path, data: str, split: str) -> dict:
    from transformers import AutoTokenizer

    from mpu.arch import embedding_parameter_names, load_config
    from mpu.data import load_split
    from mpu.io.checkpoint import Checkpoint
    from mpu.privacy.attacks import token_recovery
    from mpu.text import encode_qa, resolve_prompt

    config = load_config(target)
    name = embedding_parameter_names(config, update)[0]
    tok = AutoTokenizer.from_pretrained(str(target))
    fmt = resolve_prompt(tok, config.model_type)
    true = {i for r in load_split(data, split)
            for i in encode_qa(tok, r["question"], r["answer"], fmt=fmt).input_ids}  # fmt: skip
    res = token_recovery(update[name], Checkpoint(target).read(name).float(), true)
    return {"recall_at_k": res["recall_at_k"], "chance_at_k": res["chance_at_k"]}


def measure(args, cfg, method, label, client, data, models, retain_logs) -> dict:
    from mpu.io.checkpoint import Checkpoint
    from mpu.pipeline.evaluation import evaluate_run
    from mpu.pipeline.jobs import client_settings, unlearn
    from mpu.server.leakage.updates import round_membership

    run_cfg = dataclasses.replace(cfg, client=dataclasses.replace(cfg.client, **client))
    n_params = Checkpoint(models / "target").n_params()
    work = args.out / "work" / f"{method}-{label.replace(' ', '').replace('%', 'pct')}"
    t = time.perf_counter()
    final = unlearn(run_cfg, client_settings(run_cfg, method, n_params), "clean", data, models,
                    work)  # fmt: skip
    seconds = time.perf_counter() - t
    res, _ = evaluate_run(run_cfg, args.out, work.name, final, data, retain_logs)
    update = update_of(final, models / "target")
    mia = round_membership(Checkpoint(models / "target"), Checkpoint(final), data,
                           cfg.forget_split, 50)  # fmt: skip
    return {"method": method, "setting": label, "client_seconds": round(seconds, 1),
            **{k: res[k]["agg_value"] for k in ("forget_Q_A_Prob", "model_utility", "privleak")},
            **token_recall(update, models / "target", data, cfg.forget_split),
            "mia_calibrated": mia["calibrated"], "mia_raw": mia["raw"],
            **update_size(update)}  # fmt: skip


def table(rows: list[dict]) -> str:
    head = ("| method | update | forget prob | model utility | privleak | token recall@k / "
            "chance | calibrated MIA AUC | nonzero | zlib bytes | client s |")  # fmt: skip
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['forget_Q_A_Prob']:.4f} | "
            f"{r['model_utility']:.4f} | {r['privleak']:.2f} | "
            f"{r['recall_at_k'] / max(r['chance_at_k'], 1e-12):.2f}× | {r['mia_calibrated']:.3f} | "
            f"{100 * r['nonzero_fraction']:.1f} % | {r['zlib_bytes'] / 1e6:.2f} MB | "
            f"{r['client_seconds']:.0f} |"
        )
    return "\n".join(lines)


def add_input_options(ap: argparse.ArgumentParser) -> None:
    """Where the models and data come from and how much of each split is evaluated (the
    defaults: the embedded tiny models, every row); shared with `benchmarks/adversary.py`."""
    ap.add_argument("--models", help="a prepared models folder (base/target/retain), e.g. "
                    "SmolLM2's from benchmarks/prepare_tofu.py; default: the tiny ones")  # fmt: skip
    ap.add_argument("--data", help="the benchmark data the models were prepared on")
    ap.add_argument("--eval-limit", type=int, help="evaluate only each split's first N rows")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rounds-epochs", default="paper", choices=["paper", "single"])
    ap.add_argument("--client", nargs="*", default=[], metavar="KEY=VALUE",
                    help="client settings for every row, e.g. epochs=3 lr=5e-5")  # fmt: skip


def experiment_config(args, config_class):
    """The experiment settings every row shares (fp32 client unless --client says otherwise)."""
    from reproduce import key_values

    client = {"precision": "fp32", **key_values(args.client, "--client")}
    return config_class(forget_split=args.forget_split, seed=args.seed, progress=False,
                        models=args.models, data=args.data, eval_limit=args.eval_limit,
                        eval_max_new_tokens=args.max_new_tokens,
                        rounds_epochs=args.rounds_epochs, client=client)  # fmt: skip


def run_rows(args, labelled: list[tuple[str, dict]]) -> None:
    """Measure each (method, labelled client settings) not yet in OUT/rows.jsonl, then print
    the table (`args`: forget_split, methods, seed, out, table_only)."""
    from transformers.utils import logging as hf_logging

    from mpu.pipeline.evaluation import evaluate_run
    from mpu.pipeline.experiment import ExperimentConfig
    from mpu.pipeline.inputs import resolve_inputs

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "rows.jsonl"
    if not args.table_only:
        hf_logging.set_verbosity_error()
        cfg = experiment_config(args, ExperimentConfig)
        data, models = resolve_inputs(cfg, print)
        models = Path(models)
        retain_logs, _ = evaluate_run(cfg, args.out, "retain", models / "retain", data, None)
        done = {(r["method"], r["setting"]) for r in map(json.loads, _lines(log))}
        for method in args.methods:
            for label, client in labelled:
                if (method, label) in done:
                    continue
                row = measure(args, cfg, method, label, client, data, models, retain_logs)
                with log.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table([json.loads(x) for x in _lines(log)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--forget-split", default="forget10")
    ap.add_argument("--methods", nargs="+", default=["NPO", "GradDiff"])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.2, 0.05, 0.01])
    ap.add_argument("--scores", nargs="*", default=["fisher", "grad", "hutchinson"])
    ap.add_argument("--boost", nargs="*", default=[], metavar="FRACTION:LR",
                    help="also Fisher at FRACTION with learning rate LR")  # fmt: skip
    ap.add_argument("--embeddings", nargs="+", default=["include"],
                    choices=["include", "exclude"],
                    help="run each masked setting with the embedding/LM head allowed in the "
                    "mask (include), kept out of it (exclude), or both")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/salient"))
    ap.add_argument("--table-only", action="store_true")
    add_input_options(ap)
    args = ap.parse_args()
    run_rows(args, settings(args.fractions, args.scores, args.boost, args.embeddings))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


if __name__ == "__main__":
    main()

"""The leakage table: what a curious client rebuilds from the copies and what a curious server
learns from the updates, per setting and defence, on real model pairs (docs/threat-model.md).

For each prepared pair (a folder with base/ and target/ from `mpu model prepare`):

- client's view, for κ × m × {none, residual ρ = 0.3, residual ρ = 1, secret random α}: a job
  is initialised and round 1 published; `mpu.server.leakage.audit` measures one copy as
  published, one and all copies aligned to the public base, all copies aligned copy to copy
  without the base, the floor set by the true maps (the residual noise), and the logit gap;
- server's view, at the first κ and m, for {none, client DP, embeddings frozen}: the client
  (GradDiff, `--steps` steps of the method's defaults) unlearns every copy and the audit
  scores token recovery from the embedding update and membership from θ_r → θ_{r+1}.

    python benchmarks/leakage.py --pair tiny=DIR --pair smollm2=DIR --data DATA \
        [--forget-split forget01] [--kappas 0.01 0.1] [--copies 2 3] [--out leakage.json]

Prints a Markdown table; `--out` keeps every number.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

CLIENT_DEFENCES = {
    "none": {},
    "residual ρ=0.3": {"residual": 0.3},
    "residual ρ=1": {"residual": 1.0},
    "random α": {"alphas": "random"},
    # the paper's MPU beside our defaults (line noise, extrapolation, quarter turns)
    "paper's MPU": {"aggregation": "harmonic", "alphas": "linspace", "angles": "continuous"},
}
# (client defence, method, client settings): GradAscent trains on the forget set alone (the
# worst case for token recovery); GradDiff mixes retain batches into the same update
SERVER_DEFENCES = [
    ("none", "GradAscent", {}),
    ("none", "GradDiff", {}),
    ("DP (C=1, ε=8)", "GradAscent", {"dp": {"clip": 1.0, "epsilon": 8.0}}),
    ("embeddings frozen", "GradAscent", {"trainable": "decoder"}),
]


def client_row(pair: Path, work: Path, kappa: float, m: int, job: dict) -> dict:
    from mpu.server.config import JobConfig
    from mpu.server.job import Server
    from mpu.server.leakage import audit

    shutil.rmtree(work, ignore_errors=True)
    cfg = JobConfig(kappa=kappa, copies=m, gate=False, **job)
    server = Server.init(pair / "target", pair / "base", work / "server", cfg)
    copies = server.publish(work / "outbox", progress=False)
    t = time.perf_counter()
    c = audit(server.workdir, copies_dir=copies[0].parent)["client_view"]
    c["audit_seconds"] = time.perf_counter() - t
    return c


def server_row(
    pair: Path, work: Path, data: str, split: str, steps: int, method: str, client: dict
) -> dict:
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.unlearn import load_client_data, unlearn_copy
    from mpu.config import load_config
    from mpu.privacy.dp import DPConfig
    from mpu.server.config import JobConfig
    from mpu.server.job import Server
    from mpu.server.leakage import audit

    shutil.rmtree(work, ignore_errors=True)
    server = Server.init(pair / "target", pair / "base", work / "server",
                         JobConfig(kappa=0.01, copies=2, gate=False, max_update_ratio=0.0))  # fmt: skip
    copies = server.publish(work / "outbox", progress=False)
    dp = client.get("dp")
    cfg = load_config(ClientTrainConfig, mapping={
        "method": method, "max_steps": steps, "trainable": client.get("trainable", "all"),
        **({"dp": {**dp, "releases": len(copies)}} if dp else {})})  # fmt: skip
    data_ = load_client_data(data, split, cfg)
    deltas = [
        unlearn_copy(c, data_, cfg, work / f"client-{c.name}", progress=False,
                     receipt_key=work / "client.key")[1]
        for c in copies
    ]  # fmt: skip
    server.aggregate(deltas, progress=False)
    s = audit(server.workdir, round_=1, copies_dir=copies[0].parent, deltas=deltas, data=data,
              forget_split=split, limit=40, benchmark=False)["server_view"]  # fmt: skip
    if dp:
        s["dp_epsilon"] = DPConfig(**dp, releases=len(copies)).spent()
    return s


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pair", action="append", default=[], help="NAME=DIR (base/, target/)")
    ap.add_argument("--data")
    ap.add_argument("--forget-split", default="forget01")
    ap.add_argument("--kappas", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--copies", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--steps", type=int, default=5, help="client optimizer steps per copy")
    ap.add_argument("--light", nargs="*", default=[],
                    help="pairs whose client-view defences run at the first κ and m only, and "
                    "whose server view skips GradDiff")  # fmt: skip
    ap.add_argument("--out")
    ap.add_argument("--table-from", help="print the tables of a saved --out file and stop")
    args = ap.parse_args()
    if args.table_from:
        print(table(json.loads(Path(args.table_from).read_text())))
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    results: dict = {"client_view": [], "server_view": []}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.pair:
            name, folder = spec.split("=", 1)
            pair = Path(folder)
            for kappa in args.kappas:
                for m in args.copies:
                    first = (kappa, m) == (args.kappas[0], args.copies[0])
                    for defence, job in CLIENT_DEFENCES.items():
                        if name in args.light and job and not first:
                            continue
                        row = client_row(pair, Path(tmp) / "c", kappa, m, job)
                        results["client_view"].append({"model": name, "kappa": kappa, "m": m,
                                                       "defence": defence, **row})  # fmt: skip
                        print(f"{name} κ={kappa} m={m} {defence}: all+base "
                              f"{pct(row['all_copies_with_base'])}", flush=True)  # fmt: skip
                        save(results, args.out)
            for defence, method, client in SERVER_DEFENCES:
                if name in args.light and method != "GradAscent":
                    continue
                row = server_row(pair, Path(tmp) / "s", args.data, args.forget_split, args.steps,
                                 method, client)  # fmt: skip
                results["server_view"].append({"model": name, "defence": defence,
                                               "method": method, **row})  # fmt: skip
                print(f"{name} {defence}: {json.dumps(row)[:200]}", flush=True)
                save(results, args.out)
    print(table(results))


def save(results: dict, out: str | None) -> None:
    """Every row so far (a long run that dies keeps what it measured)."""
    if out:
        tmp = Path(out + ".tmp")
        tmp.write_text(json.dumps(results, indent=2))
        tmp.replace(out)


def table(results: dict) -> str:
    lines = [
        "| model | κ | m | defence | task ‖θ−θ_base‖/‖θ‖ | one copy as published | one copy aligned to base "
        "| all copies + base | all copies, no base | true-maps floor | weights found (true) "
        "| logit gap, all + base |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["client_view"]:
        w = ", ".join(f"{a:.3f}" for a in r["weights_found"])
        h = ", ".join(f"{a:.3f}" for a in r["true_weights"])
        lines.append(
            f"| {r['model']} | {r['kappa']:g} | {r['m']} | {r['defence']} | {r.get('task_ratio', float('nan')):.3f} "
            f"| {pct(r['one_copy_unaligned'])} | {pct(r['one_copy_aligned_to_base'])} "
            f"| {pct(r['all_copies_with_base'])} | {pct(r['all_copies_without_base'])} "
            f"| {pct(r['ideal_all_copies'])} | {w} ({h}) | {r['logit_gap_all_with_base']:.1e} |"
        )
    lines += ["", "| model | client method | client defence | forget tokens: recall@k (chance) "
              "| ranking AUC | membership AUC of the update | DP ε (δ = 1e-5) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results["server_view"]:
        tr = r.get("token_recovery") or []
        rec = sum(t["recall_at_k"] for t in tr) / len(tr) if tr else float("nan")
        auc = sum(t["auc"] for t in tr) / len(tr) if tr else float("nan")
        chance = tr[0]["chance_at_k"] if tr else float("nan")
        eps = f"{r['dp_epsilon']:.2f}" if "dp_epsilon" in r else "—"
        lines.append(f"| {r['model']} | {r['method']} | {r['defence']} | {rec:.3g} ({chance:.2g}) | {auc:.2f} "
                     f"| {r.get('membership_auc', float('nan')):.2f} | {eps} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()

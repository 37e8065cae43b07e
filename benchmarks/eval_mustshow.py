"""Sanity of the metrics on the prepared tiny models (issue 6, must-show 2).

    python benchmarks/eval_mustshow.py --prepared OUT --data DIR [--out EVAL_DIR]

Evaluates OUT/retain, then OUT/target against the retain model's log, on the synthetic TOFU
forget split recorded in OUT/prepare.json, with the default suite plus the LOSS and ZLib MIAs,
and checks: forget quality of the target < 1e-3 and of the retain model 1.0; MIA AUC (forget vs
holdout; Min-K, the attack behind privleak) of the target >= 0.8 and of the retain model in
0.5 ± 0.1 (LOSS, ZLib and Min-K++ AUCs are printed too); model utility of target and
retain within 10 % of each other. Writes {retain,target}/TOFU_EVAL.json + summaries.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mpu.eval import metrics as M
from mpu.eval.io import load_model, write_eval
from mpu.eval.tofu import DEFAULT_METRICS, evaluate_tofu

MIAS = ("mia_min_k", "mia_loss", "mia_zlib", "mia_min_k_plus_plus")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--prepared", required=True, help="OUT of `mpu model prepare`")
    ap.add_argument("--data", required=True, help="the TOFU data dir the models were prepared on")
    ap.add_argument("--out", help="where to write the logs (default: PREPARED/eval)")
    args = ap.parse_args()
    prepared = Path(args.prepared)
    record = json.loads((prepared / "prepare.json").read_text())
    forget = record.get("forget_split", "forget10")
    out = Path(args.out) if args.out else prepared / "eval"
    metrics = [*DEFAULT_METRICS, *MIAS]
    summaries, timings = {}, {}

    t0 = time.perf_counter()
    model, tok = load_model(prepared / "retain")
    retain = evaluate_tofu(model, tok, args.data, forget_split=forget, metrics=metrics)
    # the retain model against its own log, as upstream's reference run: FQ = KS(tr, tr), AUC_ret = AUC
    tr = [v["score"] for v in retain["forget_truth_ratio"]["value_by_index"].values()]
    retain["forget_quality"] = {"agg_value": M.forget_quality(tr, tr)}
    retain["privleak"] = {
        "agg_value": M.privleak(retain["mia_min_k"]["auc"], retain["mia_min_k"]["auc"])
    }
    retain_log, _ = write_eval(retain, out / "retain" / "TOFU_EVAL.json", summary_keys=metrics)
    timings["retain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, tok = load_model(prepared / "target")
    logs = json.loads(retain_log.read_text())
    target = evaluate_tofu(
        model, tok, args.data, forget_split=forget, metrics=metrics, retain_logs=logs
    )
    write_eval(target, out / "target" / "TOFU_EVAL.json", summary_keys=metrics)
    timings["target"] = time.perf_counter() - t0

    for name, res in (("retain", retain), ("target", target)):
        summaries[name] = {k: res[k]["agg_value"] for k in metrics}
    t, r = summaries["target"], summaries["retain"]
    checks = {
        "FQ(target) < 1e-3": t["forget_quality"] < 1e-3,
        "FQ(retain) == 1.0": abs(r["forget_quality"] - 1.0) < 1e-12,
        "AUC_min_k(target) >= 0.8": t["mia_min_k"] >= 0.8,
        "AUC_min_k(retain) in 0.5 ± 0.1": abs(r["mia_min_k"] - 0.5) <= 0.1,
        "|MU_t - MU_r| <= 10% MU_r": abs(t["model_utility"] - r["model_utility"])
        <= 0.1 * r["model_utility"],
    }
    print(f"{'metric':24s} {'target':>12s} {'retain':>12s}")
    for k in metrics:
        print(f"{k:24s} {t[k]:12.4g} {r[k]:12.4g}")
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    print(f"eval time: retain {timings['retain']:.0f} s, target {timings['target']:.0f} s")
    (out / "mustshow.json").write_text(
        json.dumps({"summaries": summaries, "checks": checks, "timings_s": timings}, indent=2)
    )


if __name__ == "__main__":
    main()

"""Check: every method lowers the forget10 answer probability of a target within its budget.

Runs each registered method once on a copy of the target with the profile's default budget
(10 epochs, b=8, g=4, lr 1e-5 on TOFU) and reports forget10 / retain answer probability
(OpenUnlearning `probability`: mean of exp(−avg answer-token NLL)) before and after.

    python benchmarks/methods_forget10.py --data DATA_DIR --target MODEL_DIR [--profile paper]

`--build-target` instead fine-tunes a tiny offline Llama on forget10 + 400 retain90 rows
(a stand-in when no prepared target exists). Output: a Markdown table and `--json`.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.data import load_idk, load_split
from mpu.eval.primitives import score_items
from mpu.methods import METHODS
from mpu.text import encode_qa, pad_id_of, resolve_prompt


def answer_prob(model, tok, rows) -> float:
    fmt = resolve_prompt(tok, model.config.model_type)
    enc = [encode_qa(tok, r["question"], r["answer"], fmt=fmt) for r in rows]
    stats = score_items(model, enc, pad_id=pad_id_of(tok), batch_size=32, desc="prob")
    return sum(s.prob for s in stats) / len(stats)


def build_target(forget, retain, epochs: int, seed: int = 0):
    """A 4-block tiny Llama (the product's tokenizer and training loop) memorising the rows."""
    from mpu.pipeline.tiny import TinyGeometry, build_tiny_llama, train_tokenizer
    from mpu.pipeline.train import encode_rows, train_lm

    rows = list(forget) + list(retain)
    tok = train_tokenizer([f"{r['question']} {r['answer']}" for r in rows], 2000)
    geometry = TinyGeometry(
        vocab_size=2000, hidden_size=64, intermediate_size=256, num_hidden_layers=4
    )
    model = build_tiny_llama(tok, geometry, seed=seed)
    fmt = resolve_prompt(tok, model.config.model_type)
    train_lm(
        model, encode_rows(tok, rows, fmt=fmt), pad_id=tok.pad_token_id, epochs=epochs,
        lr=2e-3, batch_size=32, seed=seed,
    )  # fmt: skip
    return model.eval(), tok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="synthetic TOFU data dir (mpu data make tofu)")
    ap.add_argument("--target", help="Hugging Face model folder of the target")
    ap.add_argument("--build-target", type=int, default=0, metavar="EPOCHS")
    ap.add_argument("--save-target", type=Path, help="save the built target (HF folder)")
    ap.add_argument("--profile", default="openunlearning")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument(
        "--lr", type=float, default=None, help="override the profile's lr (default: profile's)"
    )
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--rmu-layer", type=int, default=None, help="RMU block (default: middle)")
    ap.add_argument("--pdu-eps", type=float, default=0.3,
                    help="PDU's ε, which has no default (upstream's TOFU runs: 0.3)")  # fmt: skip
    ap.add_argument("--teacher", help="Distill's teacher (the public base); Distill is skipped "
                    "without one")  # fmt: skip
    ap.add_argument("--n-retain-eval", type=int, default=400)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    forget = [dict(r) for r in load_split(args.data, "forget10", "train")]
    alternates = [dict(r) for r in load_split(args.data, "forget10_alternate", "train")]
    retain = [dict(r) for r in load_split(args.data, "retain90", "train")]
    idk = load_idk(args.data)
    eval_retain = retain[: args.n_retain_eval]
    t0 = time.time()
    if args.target:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.target)
        target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    else:
        target, tok = build_target(forget, eval_retain, args.build_target)
        if args.save_target:
            target.save_pretrained(args.save_target)
            tok.save_pretrained(args.save_target)
    target.to(args.device)
    rmu_layer = (
        args.rmu_layer if args.rmu_layer is not None else target.config.num_hidden_layers // 2
    )
    base_f, base_r = answer_prob(target, tok, forget), answer_prob(target, tok, eval_retain)
    print(
        f"target ready in {time.time() - t0:.0f}s: forget10 prob {base_f:.4f}, "
        f"retain prob {base_r:.4f}"
    )
    results = []
    teacher = None
    if args.teacher:
        from transformers import AutoModelForCausalLM

        teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval()
    for name in args.methods:
        if name == "Distill" and teacher is None:
            print("Distill: skipped (no --teacher)")
            continue
        model = copy.deepcopy(target)
        hp = {"RMU": {"layer": rmu_layer}, "PDU": {"retain_loss_eps": args.pdu_eps}}.get(name, {})
        extra = {} if args.lr is None else {"lr": args.lr}
        cfg = ClientTrainConfig(
            method=name, profile=args.profile, precision=args.precision, hparams=hp, **extra
        )
        t = time.time()
        rows = alternates if name == "AltPO" else forget  # the same rows, with alternates
        res = train_unlearning(model, tok, rows, retain, cfg, idk_answers=idk, progress=False,
                               teacher_model=teacher)  # fmt: skip
        secs = time.time() - t
        f, r = answer_prob(model, tok, forget), answer_prob(model, tok, eval_retain)
        results.append(
            {
                "method": name,
                "steps": res.step_count,
                "seconds": round(secs, 1),
                "forget_prob": f,
                "retain_prob": r,
                "lowered": f < base_f,
            }
        )
        print(
            f"{name:10s} steps={res.step_count:4d} {secs:6.1f}s forget {base_f:.4f} -> {f:.4f}"
            f"  retain {base_r:.4f} -> {r:.4f}",
            flush=True,
        )
        del model
    print("\n| method | steps | forget10 prob (before → after) | retain prob | s |")
    print("|---|---|---|---|---|")
    for x in results:
        print(
            f"| {x['method']} | {x['steps']} | {base_f:.4f} → {x['forget_prob']:.4f} | "
            f"{base_r:.4f} → {x['retain_prob']:.4f} | {x['seconds']} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "profile": args.profile,
                    "precision": args.precision,
                    "before": {"forget": base_f, "retain": base_r},
                    "results": results,
                },
                indent=1,
            )
        )
    if not all(x["lowered"] for x in results):
        raise SystemExit("some method did not lower the forget10 answer probability")


if __name__ == "__main__":
    main()

"""Our TOFU suite beside OpenUnlearning's own evaluator (issue 28, must-show 2): the same model,
the same rows, each run as its users run it, wall time and every shared metric compared.

    python benchmarks/openunlearning_side_by_side.py --ou OU_CHECKOUT --data DATA \
        --model MODELS/target --retain MODELS/retain --out runs/ou-side-by-side

OpenUnlearning (github.com/locuslab/open-unlearning) is not a PyPI package and is never
downloaded here: `--ou` is a checkout of it, run with this environment's torch and transformers
plus `hydra-core==1.3.2` and `hydra_colorlog` (`--ou-deps DIR`: a `pip install --target DIR`
of those two, put first on its path). Its `src/eval.py` runs exactly as its README says
(`experiment=eval/tofu/default`), on CPU in fp32, with the prompt format our own evaluation
resolves for the model (`template_args`). Its datasets name the Hugging Face hub
(`locuslab/TOFU`); a `sitecustomize` on its path answers those names from `--data`'s local
JSONL files instead, and changes nothing else; an empty `deepspeed` module stands in for the
GPU package its RMU trainer imports, and a refusing `lm_eval` for its lm-eval-harness evaluator
(neither is called by the TOFU evaluator).

Each side evaluates the retain model first (its log feeds forget_quality and privleak), then
the target with that log; both are timed end to end as commands (interpreter start, model
load, every metric, the result files). The ratio is OpenUnlearning's seconds over ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REDIRECT = """
import datasets

_load = datasets.load_dataset


def _local(path, name=None, split=None, **kwargs):
    if path == "locuslab/TOFU":
        files = {split or "train": f"{DATA}/{name}/{split or 'train'}.jsonl"}
        return _load("json", data_files=files, split=split)
    return _load(path, name=name, split=split, **kwargs)


datasets.load_dataset = _local
"""


def template_args(model: Path) -> dict:
    """OpenUnlearning's `template_args` for the prompt format our evaluation resolves."""
    from transformers import AutoConfig, AutoTokenizer

    from mpu.text import resolve_prompt

    tok = AutoTokenizer.from_pretrained(str(model))
    fmt = resolve_prompt(tok, AutoConfig.from_pretrained(str(model)).model_type)
    if fmt.template == "chat":
        out = {"apply_chat_template": True, "system_prompt": fmt.system_prompt}
        if fmt.date_string is not None:
            out["date_string"] = fmt.date_string
        return out
    return {"apply_chat_template": False, "user_start_tag": fmt.user_start,
            "user_end_tag": fmt.user_end, "asst_start_tag": fmt.assistant_start,
            "asst_end_tag": fmt.assistant_end}  # fmt: skip


def first_rows(data: Path, n: int, out: Path) -> Path:
    """A copy of the data folder with each split's first `n` rows (both sides read it), its
    manifest's counts to match."""
    counts = {}
    for src in data.glob("*/*.jsonl"):
        dst = out / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with src.open() as fh:
            rows = [line for _, line in zip(range(n), fh, strict=False)]
        dst.write_text("".join(rows))
        counts[f"{src.parent.name}/{src.stem}"] = len(rows)
    for src in data.glob("*.jsonl"):
        (out / src.name).write_bytes(src.read_bytes())
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["counts"] = dict(sorted(counts.items()))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out


def v4_folder(model: Path, out: Path) -> Path:
    """The model folder as transformers 4.45 (OpenUnlearning's pin) reads it: the same weights
    and tokenizer.json (linked), the config's rope θ and dtype under their v4 keys, and the
    tokenizer config's v5-only fields (a chat_template.jinja beside it, the TokenizersBackend
    class, `extra_special_tokens`) written the v4 way."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        if (model / name).is_file() and not (out / name).exists():
            (out / name).symlink_to(model / name)
    config = json.loads((model / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and rope.get("rope_type", "default") == "default":
        config["rope_theta"] = rope["rope_theta"]
    config.setdefault("torch_dtype", config.get("dtype", "float32"))
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tok = json.loads((model / "tokenizer_config.json").read_text())
    tok["tokenizer_class"] = "PreTrainedTokenizerFast"
    if (model / "chat_template.jinja").is_file():
        tok["chat_template"] = (model / "chat_template.jinja").read_text()
    if isinstance(tok.get("extra_special_tokens"), list):
        tok["additional_special_tokens"] = tok.pop("extra_special_tokens")
    (out / "tokenizer_config.json").write_text(json.dumps(tok, indent=1))
    return out


def _hydra_value(v) -> str:
    return "null" if v is None else json.dumps(v)


def ou_command(args, model: Path, out: Path, retain_logs: Path | None) -> list[str]:
    """OpenUnlearning's eval entry point with the overrides that point it at this model on CPU."""
    fmt = template_args(model)
    model = v4_folder(model, out.parent / f"{out.name}-model")
    overrides = [
        "experiment=eval/tofu/default",
        f"forget_split={args.forget_split}",
        f"holdout_split={args.holdout_split}",
        f"model.model_args.pretrained_model_name_or_path={model}",
        f"model.tokenizer_args.pretrained_model_name_or_path={model}",
        "~model.model_args.attn_implementation",
        "model.model_args.torch_dtype=float32",
        "model.model_args.device_map=cpu",
        "~model.template_args",
        *(f"+model.template_args.{k}={_hydra_value(v)}" for k, v in fmt.items()),
        f"retain_logs_path={retain_logs if retain_logs else 'null'}",
        f"task_name={out.name}",
        f"paths.output_dir={out}",
    ]
    return [sys.executable, "src/eval.py", *overrides]


def ours_command(args, model: Path, out: Path, retain_logs: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "mpu.cli", "eval", "--model", str(model), "--data", str(args.data),
           "--out", str(out / "TOFU_EVAL.json"), "--forget-split", args.forget_split,
           "--holdout-split", args.holdout_split, "--quiet"]  # fmt: skip
    return cmd + (["--retain-logs", str(retain_logs)] if retain_logs else [])


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as fh:
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({done.returncode}); see {log}")
    return time.perf_counter() - t


def environments(args) -> tuple[dict, dict]:
    """(OpenUnlearning's environment, ours): the same threads; its path has the hub redirect."""
    shim = Path(tempfile.mkdtemp(prefix="ou-shim-"))
    (shim / "sitecustomize.py").write_text(f"DATA = {str(args.data.resolve())!r}\n" + REDIRECT)
    # its RMU trainer imports deepspeed at import time (src/trainer/__init__.py imports every
    # trainer); the evaluator never calls it, and deepspeed is a GPU package
    (shim / "deepspeed.py").write_text('"""Imported, never used, by the RMU trainer."""\n')
    _stub_lm_eval(shim)
    base = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    path = [str(shim), *([str(args.ou_deps)] if args.ou_deps else []), str(args.ou / "src")]
    ou = {**base, "PYTHONPATH": os.pathsep.join([*path, base.get("PYTHONPATH", "")])}
    return ou, base


def _stub_lm_eval(shim: Path) -> None:
    """Its `evals/__init__.py` imports its lm-eval-harness evaluator, which imports `lm_eval`
    (a large package with its own dependency tree) at import time; the TOFU evaluator never
    uses it. The stand-in has the three names imported, and refuses to run."""
    refuse = "raise RuntimeError('lm_eval is not installed in this side-by-side harness')"
    (shim / "lm_eval" / "models").mkdir(parents=True)
    (shim / "lm_eval" / "__init__.py").write_text(f"def simple_evaluate(*a, **k):\n    {refuse}\n")
    (shim / "lm_eval" / "tasks.py").write_text(
        f"class TaskManager:\n    def __init__(self, *a, **k):\n        {refuse}\n"
    )
    (shim / "lm_eval" / "models" / "__init__.py").write_text("")
    (shim / "lm_eval" / "models" / "hf_vlms.py").write_text(
        f"class HFLM:\n    def __init__(self, *a, **k):\n        {refuse}\n"
    )


def summary(folder: Path) -> dict:
    """{metric: agg_value} of one side's target evaluation."""
    data = json.loads((folder / "TOFU_SUMMARY.json").read_text())
    return {k: (v["agg_value"] if isinstance(v, dict) else v) for k, v in data.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ou", type=Path, required=True, help="an OpenUnlearning checkout")
    ap.add_argument("--ou-deps", type=Path, help="pip --target folder with hydra-core 1.3.2")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--retain", type=Path, help="the retain model (forget_quality, privleak)")
    ap.add_argument("--forget-split", default="forget10")
    ap.add_argument("--holdout-split", default="holdout10")
    ap.add_argument("--rows", type=int, help="evaluate each split's first N rows (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--sides",
        nargs="+",
        default=["ou", "ours"],
        choices=["ou", "ours"],
        help="run only these (the other's results and seconds are read from OUT)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/ou-side-by-side"))
    args = ap.parse_args()
    args.out = args.out.resolve()
    if args.rows:
        args.data = first_rows(args.data, args.rows, args.out / "data")
    ou_env, our_env = environments(args)
    runs = {"ou": (ou_command, ou_env, args.ou), "ours": (ours_command, our_env, Path.cwd())}
    for side in args.sides:
        run_side(args, side, *runs[side])
    report(args, {s: json.loads((args.out / s / "seconds.json").read_text()) for s in runs})


def run_side(args, side: str, command, env: dict, cwd: Path) -> None:
    """The retain model's evaluation, then the target's with its log; seconds of each."""
    seconds, logs = {}, None
    for role, model in (("retain", args.retain), ("target", args.model)):
        if model is None:
            continue
        out = args.out / side / role
        out.mkdir(parents=True, exist_ok=True)
        cmd = command(args, model.resolve(), out, logs)
        seconds[role] = timed(cmd, cwd, env, args.out / f"{side}-{role}.log")
        print(f"{side} {role}: {seconds[role]:.1f} s", flush=True)
        logs = out / "TOFU_EVAL.json"
    (args.out / side / "seconds.json").write_text(json.dumps(seconds))


def report(args, seconds: dict) -> None:
    ou, ours = (summary(args.out / s / "target") for s in ("ou", "ours"))
    shared = sorted(ou.keys() & ours.keys())
    rows = [(k, ou[k], ours[k]) for k in shared]
    total = {s: sum(seconds[s].values()) for s in seconds}
    print("| metric | OpenUnlearning | ours | |difference| |\n|---|---|---|---|")
    for k, a, b in rows:
        diff = abs(a - b) if a is not None and b is not None else float("nan")
        print(f"| {k} | {a} | {b} | {diff:.3g} |")
    print(f"\nwall s (retain + target): OpenUnlearning {total['ou']:.1f}, ours {total['ours']:.1f}; "
          f"OpenUnlearning / ours = {total['ou'] / total['ours']:.2f}")  # fmt: skip
    only = {"ou": sorted(ou.keys() - ours.keys()), "ours": sorted(ours.keys() - ou.keys())}
    (args.out / "side_by_side.json").write_text(json.dumps(
        {"seconds": seconds, "metrics": rows, "only_in": only}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

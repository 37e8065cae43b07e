"""The audit's result on disk and on the page: leakage.json, leakage.md, the report's summary."""

from __future__ import annotations

import json
from pathlib import Path


def write(result: dict, out: Path) -> None:
    from mpu.io.checkpoint import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "leakage.json", result)
    (out / "leakage.md").write_text(markdown(result), encoding="utf-8")


def markdown(result: dict) -> str:
    c = result["client_view"]
    pct = lambda x: f"{100 * x:.2f}%"  # noqa: E731
    lines = [
        "# Privacy leakage audit",
        "",
        f"Round {c['round']}, m = {c['copies']}, κ = {c['kappa']}, ρ = {c['residual']}. Errors are "
        "‖θ̂ − θ‖ relative to what fine-tuning changed (‖θ − θ_base‖): 100% is as far from θ as "
        "the public base is; the logit gap is max |logits(θ̂) − logits(θ)| / max |logits(θ)|.",
        "",
        "## What a client holding the copies can rebuild",
        "",
        "| attack | relative error | logit gap |",
        "|---|---|---|",
        f"| one copy as published (no alignment) | {pct(c['one_copy_unaligned'])} | — |",
        f"| one copy aligned to the public base | {pct(c['one_copy_aligned_to_base'])} | {c['logit_gap_one_copy']:.1e} |",
        f"| all {c['copies']} copies, aligned to the base, affine weights closest to it | {pct(c['all_copies_with_base'])} | {c['logit_gap_all_with_base']:.1e} |",
        f"| all copies aligned copy to copy, no base (default α assumed) | {pct(c['all_copies_without_base'])} | {c['logit_gap_all_without_base']:.1e} |",
        "",
        f"Weights found without knowing α: {', '.join(f'{w:.3f}' for w in c['weights_found'])} "
        f"(the weights that cancel the noise: {', '.join(f'{w:.3f}' for w in c['true_weights'])}).",
        f"Alignment-free: the per-head invariants of one copy are {pct(c['invariant_distance_copy'])} from θ's "
        f"(the public base's: {pct(c['invariant_distance_base'])}).",
        f"Yardsticks from the secrets: the true maps and weights combine the copies to "
        f"{pct(c['ideal_all_copies'])} of θ (the residual noise floor is {pct(c['residual_floor'])}); "
        f"one copy undone with its own secrets is {c['exact_with_secrets']:.1e} from θ (sanity).",
    ]  # fmt: skip
    lines += _benchmark_lines(c) + _functional_lines(result.get("functional"))
    lines += _update_lines(result.get("server_view", {}))
    return "\n".join(lines) + "\n"


def _benchmark_lines(c: dict) -> list[str]:
    lines: list[str] = []
    if "metrics" in c:
        mt = c["metrics"]
        lines += ["", f"Benchmark numbers (first {mt['rows']} rows of each split):", "",
                  "| model | forget Q_A prob | model utility |", "|---|---|---|"]  # fmt: skip
        for label, key in (("θ (the server's)", "theta"), ("θ̂ (all copies + base)", "reconstruction"),
                           ("public base", "base")):  # fmt: skip
            lines.append(
                f"| {label} | {mt[key]['forget_Q_A_Prob']:.4f} | {mt[key]['model_utility']:.4f} |"
            )
    return lines


def _functional_lines(f: dict | None) -> list[str]:
    """The functional-leakage table: how much of θ's fine-tuned knowledge each model computes."""
    head = ["", "## What a client can run: functional leakage", ""]
    if f is None:
        return [*head, "Not measured: give `--knowledge` (θ's fine-tuning data) or `--data`."]
    row = lambda label, x: f"| {label} | {x['answer_prob']:.3f} | {x['log_likelihood']:.3f} |"  # noqa: E731
    lines = [
        *head,
        f"L = (s(M) − s(base)) / (s(θ) − s(base)) on {f['items']} items of θ's fine-tuning data "
        f"({f['knowledge']}): 1 is a clone of θ, 0 is nothing beyond the public base. A round "
        "leaks as much as its most telling copy, so its figure is the maximum over the copies.",
        "", "| model the client holds | L (answer prob) | L (log-likelihood) |", "|---|---|---|",
        row("**one copy as published (max over copies)**", f["one_copy"]),
    ]  # fmt: skip
    lines += [row(f"copy {i + 1} as published", x) for i, x in enumerate(f["copies_as_published"])]
    for key, label in (("one_copy_aligned", "one copy aligned to the base"),
                       ("all_copies_with_base", "all copies combined with the base"),
                       ("all_copies_base_filled", "… emulator: the blocks they lack the base's"),
                       ("all_copies_at_emulator_depth", "… emulator: run at the copies' depth"),
                       ("all_copies_without_base", "all copies combined without the base")):  # fmt: skip
        if key in f:
            lines.append(row(label, f[key]))
    return lines


def _update_lines(s: dict) -> list[str]:
    lines: list[str] = []
    if s.get("token_recovery") or "membership_auc" in s:
        lines += ["", "## What the server learns from the updates", ""]
    for i, t in enumerate(s.get("token_recovery", [])):
        if not t.get("informative", True):
            lines.append(f"Update {i + 1}: no {s['embedding_tensor']} row moved (embeddings not trained): "
                         f"the forget set's tokens can only be guessed (chance {t['chance_at_k']:.3f}).")  # fmt: skip
            continue
        lines.append(
            f"Update {i + 1}: the {s['embedding_tensor']} rows reveal the forget set's "
            f"tokens with precision {t['precision_at_k']:.2f} and recall {t['recall_at_k']:.2f} at k = "
            f"{t['true_tokens']} (chance {t['chance_at_k']:.3f}; ranking AUC {t['auc']:.2f})."
        )
    if "membership_auc" in s:
        lines.append(
            f"Membership from the aggregated update (loss rise of forget vs holdout items): AUC "
            f"{s['membership_auc']:.2f} (0.5 = the update tells nothing)."
        )
    if "membership_auc_calibrated" in s:
        lines.append(
            "Calibrated against a random update of the same per-tensor norms (any perturbation "
            "raises the loss of memorised items; that part is not the update's doing): AUC "
            f"{s['membership_auc_calibrated']:.2f}."
        )
    return lines


def summary(result: dict) -> dict:
    """The few numbers a report shows for a run."""
    c = result["client_view"]
    out = {
        "copies": c["copies"],
        "one_copy_aligned": c["one_copy_aligned_to_base"],
        "all_copies_with_base": c["all_copies_with_base"],
        "all_copies_without_base": c["all_copies_without_base"],
        "logit_gap_all_with_base": c["logit_gap_all_with_base"],
        "ideal_all_copies": c["ideal_all_copies"],
        "residual_floor": c["residual_floor"],
    }
    s = result.get("server_view", {})
    tr = s.get("token_recovery")
    if tr:
        out["token_recall_at_k"] = sum(t["recall_at_k"] for t in tr) / len(tr)
        out["token_chance_at_k"] = tr[0]["chance_at_k"]
    for key in ("membership_auc", "membership_auc_calibrated"):
        if key in s:
            out[key] = s[key]
    f = result.get("functional")
    if f is not None:
        out["functional_one_copy"] = f["one_copy"]["answer_prob"]
        out["functional_all_with_base"] = f["all_copies_with_base"]["answer_prob"]
    return json.loads(json.dumps(out))


def read(path: Path) -> dict:
    """A leakage.json written by `write` (or the folder holding it)."""
    from mpu.errors import DataError

    path = path / "leakage.json" if path.is_dir() else path
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise DataError(f"{path}: not a readable leakage.json ({reason})") from None
    if not isinstance(result, dict) or not isinstance(result.get("client_view"), dict):
        raise DataError(f"{path}: not a leakage audit (no client_view)")
    for key in SUMMARY_FIELDS:
        value = result["client_view"].get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataError(f"{path}: client_view.{key} must be a number, got {value!r:.40}")
    _check_parts(result, path)
    return result


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_parts(result: dict, path: Path) -> None:
    """The server's view and the functional leakage, where present, in the shapes `summary`
    and `markdown` read; anything else is one error naming the field."""
    from mpu.errors import DataError

    def bad(field: str) -> DataError:
        return DataError(f"{path}: {field} is not what an audit writes")

    for part in ("server_view", "functional"):
        if part in result and not isinstance(result[part], dict):
            raise bad(part)
    s = result.get("server_view", {})
    tr = s.get("token_recovery")
    if tr is not None and not (isinstance(tr, list) and all(
            isinstance(t, dict) and _number(t.get("recall_at_k")) and _number(t.get("chance_at_k"))
            for t in tr)):  # fmt: skip
        raise bad("server_view.token_recovery")
    for key in ("membership_auc", "membership_auc_calibrated"):
        if key in s and not _number(s[key]):
            raise bad(f"server_view.{key}")
    f = result.get("functional")
    if f is not None:
        for key in ("one_copy", "all_copies_with_base"):
            if not (isinstance(f.get(key), dict) and _number(f[key].get("answer_prob"))):
                raise bad(f"functional.{key}")


SUMMARY_FIELDS = ("copies", "one_copy_aligned_to_base", "all_copies_with_base",
                  "all_copies_without_base", "logit_gap_all_with_base", "ideal_all_copies",
                  "residual_floor")  # fmt: skip

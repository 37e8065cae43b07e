"""`mpu privacy audit`: run the attacks of `mpu.privacy` on a job's real copies and updates and
measure them against the truth the server holds (θ, the base, the secret key).

Client's view: how close θ̂ gets to θ from one copy and from all m, aligned to the public base
or copy to copy without it; the weights it finds against the true noise-cancelling ones; the
logit gap between θ̂ and θ; θ̂'s benchmark numbers next to θ's; the alignment-free invariant distance; and,
as a sanity check, that the true secrets undo a copy exactly. Server's view (with the round's
deltas): which forget-set tokens the embedding updates reveal, and a membership test of
forget against holdout items on the update. Results: `leakage.json` and `leakage.md`.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import torch

from mpu.arch.base import Layout, Role
from mpu.io.checkpoint import Checkpoint
from mpu.privacy import attacks as A
from mpu.privacy.align import BlockMaps
from mpu.protocol.reparam import BlockTransform, transform
from mpu.server.job import Server
from mpu.server.state import round_dir


def invert(t: torch.Tensor, role: Role, g, maps: BlockMaps) -> torch.Tensor:
    """The protocol's inverse map, for the attacks' estimated maps."""
    return transform(t, role, g, BlockTransform(maps.A, maps.C, maps.ffn_perm), inverse=True)


def load(ck: Checkpoint, names: list[str]) -> dict[str, torch.Tensor]:
    return {n: ck.read(n).to(torch.float32) for n in names}


def _rel(a, b, task: float, names=None) -> float:
    return A.distance(a, b, names) / task


def logit_gap(
    model_dir: Path, weights: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]
) -> float:
    """max |logits(weights) − logits(reference)| / max |logits(reference)| on real tokens."""
    from mpu.server.gate import gate_token_ids

    model = _model(model_dir)
    ids = gate_token_ids(model_dir, model.config.vocab_size, length=32)
    params = dict(model.named_parameters())

    def logits(w):
        with torch.no_grad():
            for n, t in w.items():
                if n in params:
                    params[n].copy_(t)
            return model(ids).logits.float()

    ref = logits(reference)
    return float((logits(weights) - ref).abs().max() / ref.abs().max())


def combining_weights(cfg, alphas: list[float], ks: list[int]) -> list[float]:
    """Weights with Σ w = 1 that remove the noise of the copies `ks` exactly, given the
    secrets: the harmonic ones for the zero-sum design (all m copies), the two-or-more-point
    Lagrange weights at zero noise for the line design (any two copies of a line suffice)."""
    from mpu.protocol.aggregate import extrapolation_weights
    from mpu.protocol.noise import line_nodes

    if cfg.noise_design == "line" and len(ks) > 1:
        nodes = line_nodes(alphas)
        return extrapolation_weights([nodes[k] for k in ks])
    return A.harmonic([alphas[k] for k in ks])


def with_secrets(
    server: Server, round_: int, layout: Layout, copies: list[tuple[Checkpoint, int]], theta, task
) -> dict:
    """What the secrets themselves give, as yardsticks for the attacks:

    - `exact_with_secrets`: copy 1 undone with its true map, noise and residual removed,
      ‖· − θ‖ / ‖θ‖ — the sanity check that the audit reads the copies right (≈ 1e-7 in fp32);
    - `ideal_all_copies`: the true inverses combined with the weights that cancel the noise — the best
      any attacker can do with every copy of the round, relative to ‖θ − θ_base‖ (0 without a
      residual: the copies *determine* θ, only the maps hide it);
    - `residual_floor`: ‖ξ‖ / ‖θ − θ_base‖, the residual noise no combination can remove."""
    from mpu.protocol.noise import noise_basis
    from mpu.server.publish import TransformCache, noised, sigma_key

    cfg = server.cfg
    streams = server._streams()
    transforms = TransformCache(streams, round_, layout, cfg)
    alphas = server.state.alphas[str(round_)]
    sigmas = server.state.sigmas[str(round_)]
    m = len(alphas)
    basis = noise_basis(m, cfg.noise_design)
    weights = combining_weights(cfg, alphas, [k for _, k in copies])
    exact = ideal = floor = 0.0
    for name in theta:
        target = theta[name].double()
        inverted = [
            transforms.apply(ck.read(name), name, k, inverse=True).double() for ck, k in copies
        ]
        combined = sum(w * y for w, y in zip(weights, inverted, strict=True))
        ideal += float((combined - target).square().sum())
        y = inverted[0]
        if noised(name, layout, cfg) and cfg.kappa > 0:
            noise_name = layout.tied.get(name, name)
            sigma = sigmas[sigma_key(name, layout, cfg)]
            k = copies[0][1]
            for j in range(basis.shape[1]):
                z = torch.randn(tuple(y.shape), generator=streams.noise(round_, noise_name, j))
                y = y - alphas[k] * float(basis[k, j]) * sigma * z.double()
            if cfg.residual > 0:
                xi = torch.randn(tuple(y.shape), generator=streams.residual(noise_name))
                xi = cfg.residual * sigma * xi.double()
                y = y - xi
                floor += float(xi.square().sum())
        exact += float((y - target).square().sum())
    return {
        "exact_with_secrets": math.sqrt(exact) / A.norm(theta),
        "ideal_all_copies": math.sqrt(ideal) / task,
        "residual_floor": math.sqrt(floor) / task,
    }


def client_view(
    server: Server,
    round_: int,
    copies: list[Path],
    *,
    data=None,
    forget_split: str = "forget10",
    limit: int = 50,
) -> dict:
    """Reconstruction errors of θ̂ from the copies, with and without the base (see module doc)."""
    theta_ck = Checkpoint(round_dir(server.workdir, round_))
    layout = server.layout(theta_ck)
    names = theta_ck.names()
    theta = load(theta_ck, names)
    base = load(Checkpoint(server.state.base_dir), [n for n in names if n not in layout.tied])
    for alias, canonical in layout.tied.items():
        base[alias] = base[canonical]
    published = [load(Checkpoint(c), names) for c in copies]
    blocks = [n for n in names if layout.block_of(n) is not None]
    task = A.distance(theta, base)
    records = {r.folder: r for r in server.state.copy_records(round_)}
    alphas = server.state.alphas[str(round_)]
    true_alpha = [alphas[records[c.name].k] for c in copies]
    with_base = A.reconstruct(layout, published, invert, base=base)
    combos = [
        _rel(A.combine(with_base["aligned"][:j], A.affine_weights(with_base["aligned"][:j], base)), theta, task)
        for j in range(1, len(copies) + 1)
    ]  # fmt: skip
    no_base = A.reconstruct(layout, published, invert, base=None)
    # evaluator's step, not the attacker's: put θ̂ (copy 1's coordinates) into θ's to measure it
    from mpu.privacy.align import align

    no_base_aligned, _ = align(layout, no_base["all"], theta, invert)
    out = {
        "round": round_,
        "copies": len(copies),
        "kappa": server.cfg.kappa,
        "residual": server.cfg.residual,
        "alphas_by_copy": true_alpha,
        "task_vector_norm": task,
        "task_ratio": task / A.norm(theta),
        "one_copy_unaligned": _rel(published[0], theta, task),
        "one_copy_aligned_to_base": combos[0],
        "copies_combined_with_base": combos,
        "all_copies_with_base": combos[-1],
        "weights_found": with_base["weights"],
        "true_weights": combining_weights(
            server.cfg, alphas, [records[c.name].k for c in copies]
        ),
        "all_copies_without_base": _rel(no_base_aligned, theta, task),
        "blocks_error_all_with_base": _rel(with_base["all"], theta, A.distance(theta, base, blocks), blocks),
        "invariant_distance_copy": A.invariant_distance(layout, published[0], theta),
        "invariant_distance_base": A.invariant_distance(layout, base, theta),
        "logit_gap_one_copy": logit_gap(theta_ck.path, with_base["one"], theta),
        "logit_gap_all_with_base": logit_gap(theta_ck.path, with_base["all"], theta),
        "logit_gap_all_without_base": logit_gap(theta_ck.path, no_base["all"], theta),
        **with_secrets(server, round_, layout, [(Checkpoint(c), records[c.name].k) for c in copies], theta, task),
    }  # fmt: skip
    if data is not None:
        out["metrics"] = {
            "theta": _tofu(theta_ck.path, theta, data, forget_split, limit),
            "reconstruction": _tofu(theta_ck.path, with_base["all"], data, forget_split, limit),
            "base": _tofu(theta_ck.path, base, data, forget_split, limit),
            "rows": limit,
        }
    return out


def _model(model_dir: Path, weights: dict | None = None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    if weights is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, t in weights.items():
                if n in params:
                    params[n].copy_(t)
    return model


def _tofu(model_dir: Path, weights: dict, data, forget_split: str, limit: int) -> dict:
    """θ̂'s forget answer probability and model utility, as the benchmark scores them."""
    from transformers import AutoTokenizer

    from mpu.eval.tofu import evaluate_tofu

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    res = evaluate_tofu(_model(model_dir, weights), tok, data, forget_split=forget_split,
                        metrics=["forget_Q_A_Prob", "model_utility"], limit=limit,
                        max_new_tokens=32, progress=False)  # fmt: skip
    return {k: res[k]["agg_value"] for k in ("forget_Q_A_Prob", "model_utility")}


def membership(before: Path, after: Path, data, forget_split: str, limit: int) -> float:
    """AUC of "this item's loss rose more under the round's update" separating forget from
    holdout items: what the server learns about the forget set from θ_r → θ_r + Δ̄ (0.5 = nothing).

    It is upstream's reference attack (loss under the model minus loss under a reference) with
    θ_{r+1} as the model and θ_r as the reference, read the other way round: there a *lower*
    score marks a member, so the AUC here is 1 − that attack's AUC."""
    from transformers import AutoTokenizer

    from mpu.eval.tofu import evaluate_tofu

    tok = AutoTokenizer.from_pretrained(str(after))
    res = evaluate_tofu(_model(after), tok, data, forget_split=forget_split, metrics=["mia_reference"],
                        reference_model=_model(before), limit=limit, progress=False)  # fmt: skip
    return 1.0 - float(res["mia_reference"]["auc"])


def server_view(
    server: Server,
    round_: int,
    deltas: list[Path],
    *,
    data=None,
    forget_split: str = "forget10",
    limit: int = 50,
) -> dict:
    """What the updates reveal: forget-set tokens from the embedding rows, and membership."""
    from mpu.io.delta import DeltaFile

    theta_ck = Checkpoint(round_dir(server.workdir, round_))
    layout = server.layout(theta_ck)
    emb = A.embedding_names(layout)
    out: dict[str, Any] = {"deltas": len(deltas)}
    if data is None:
        return out
    from transformers import AutoTokenizer

    from mpu.data import load_split, tofu_splits
    from mpu.text import encode_qa, resolve_prompt

    tok = AutoTokenizer.from_pretrained(str(theta_ck.path))
    fmt = resolve_prompt(tok, theta_ck.config.get("model_type"))
    rows = load_split(data, tofu_splits(forget_split).forget)
    true_tokens = {
        i for r in rows for i in encode_qa(tok, r["question"], r["answer"], fmt=fmt).input_ids
    }
    if emb and deltas:
        name = emb[0]
        weights = theta_ck.read(name).float()
        out["token_recovery"] = [
            A.token_recovery(DeltaFile(d).read(name), weights, true_tokens) for d in deltas
        ]
        out["embedding_tensor"] = name
    after = round_dir(server.workdir, round_ + 1)
    if (after / "config.json").is_file():
        out["membership_auc"] = membership(theta_ck.path, after, data, forget_split, limit)
    return out


def audit(
    workdir: str | Path,
    *,
    round_: int | None = None,
    copies_dir: str | Path | None = None,
    deltas: list[str | Path] | None = None,
    data: str | None = None,
    forget_split: str = "forget10",
    limit: int = 50,
    out: str | Path | None = None,
    benchmark: bool = True,
) -> dict:
    """Run both views on a published round (the latest by default); write leakage.json/md.

    `benchmark=False` skips θ̂'s benchmark scores (three evaluations; `mpu run` reports the
    reconstruction errors and logit gaps instead)."""
    server = Server(workdir)
    published = sorted(int(r) for r in server.state.copies)
    if not published:
        from mpu.errors import ConfigError

        raise ConfigError(f"{workdir}: no round has been published yet: nothing to audit")
    round_ = round_ or published[-1]
    if round_ not in published:
        from mpu.errors import ConfigError

        raise ConfigError(f"{workdir}: round {round_} was not published (published: {published})")
    with tempfile.TemporaryDirectory() as tmp:
        copies = (
            sorted(p for p in Path(copies_dir).glob("copy-*") if p.is_dir())
            if copies_dir
            else server.regenerate(round_, Path(tmp) / "copies")
        )
        result = {
            "client_view": client_view(
                server,
                round_,
                copies,
                data=data if benchmark else None,
                forget_split=forget_split,
                limit=limit,
            )
        }
    if deltas or data:
        result["server_view"] = server_view(
            server, round_, [Path(d) for d in deltas or []], data=data,
            forget_split=forget_split, limit=limit,
        )  # fmt: skip
    if out is not None:
        write(result, Path(out))
    return result


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
    if "metrics" in c:
        mt = c["metrics"]
        lines += ["", f"Benchmark numbers (first {mt['rows']} rows of each split):", "",
                  "| model | forget Q_A prob | model utility |", "|---|---|---|"]  # fmt: skip
        for label, key in (("θ (the server's)", "theta"), ("θ̂ (all copies + base)", "reconstruction"),
                           ("public base", "base")):  # fmt: skip
            lines.append(
                f"| {label} | {mt[key]['forget_Q_A_Prob']:.4f} | {mt[key]['model_utility']:.4f} |"
            )
    s = result.get("server_view", {})
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
    return "\n".join(lines) + "\n"


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
    if "membership_auc" in s:
        out["membership_auc"] = s["membership_auc"]
    return json.loads(json.dumps(out))


def read(path: Path) -> dict:
    """A leakage.json written by `write` (or the folder holding it)."""
    from mpu.errors import DataError

    path = path / "leakage.json" if path.is_dir() else path
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable leakage.json ({exc})") from None
    if not isinstance(result, dict) or "client_view" not in result:
        raise DataError(f"{path}: not a leakage audit (no client_view)")
    return result

"""`mpu privacy audit`: run the attacks of `mpu.privacy` on a job's real copies and updates and
measure them against the truth the server holds (θ, the base, the secret key).

- `copies`: the client's view — how close θ̂ gets to θ from the copies;
- `functional`: how much of θ's fine-tuned knowledge a copy, or θ̂, still computes;
- `updates`: the server's view — what the updates reveal of the forget set;
- `render`: leakage.json, leakage.md and the few numbers a report shows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mpu.server.job import Server
from mpu.server.leakage.copies import (
    RoundView,
    client_view,
    combining_weights,
    invert,
    load,
    read_round,
)
from mpu.server.leakage.render import markdown, read, summary, write
from mpu.server.leakage.updates import server_view

__all__ = ["audit", "client_view", "combining_weights", "invert", "load", "markdown", "read",
           "server_view", "summary", "write"]  # fmt: skip


def audit(
    workdir: str | Path,
    *,
    round_: int | None = None,
    copies_dir: str | Path | None = None,
    deltas: list[str | Path] | None = None,
    data: str | None = None,
    forget_split: str = "forget10",
    limit: int = 50,
    knowledge: str | Path | None = None,
    knowledge_limit: int = 200,
    out: str | Path | None = None,
    benchmark: bool = True,
) -> dict:
    """Run both views on a published round (the latest by default); write leakage.json/md.

    Functional leakage is scored on `knowledge` (θ's fine-tuning data; by default `data`'s
    `full` split), `knowledge_limit` items spread over it. `benchmark=False` skips θ̂'s
    benchmark scores (three evaluations; `mpu run` reports the reconstruction errors, logit
    gaps and functional leakage instead)."""
    server = Server(workdir)
    round_ = _published_round(server, workdir, round_)
    knowledge = knowledge if knowledge is not None else data
    if limit < 1 or knowledge_limit < 0:
        from mpu.errors import ConfigError

        raise ConfigError(f"limit={limit}, knowledge_limit={knowledge_limit}: need ≥ 1 and ≥ 0")
    if deltas:  # the round's own updates, every copy's, as Post-Process would take them
        from mpu.server.aggregate import match_deltas

        match_deltas([Path(d) for d in deltas], job_id=server.state.job_id, round_=round_,
                     records=server.state.copy_records(round_), key=server.state.key)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        copies = (
            round_copies(server, round_, Path(copies_dir))
            if copies_dir
            else server.regenerate(round_, Path(tmp) / "copies")
        )
        view = read_round(server, round_, copies)
        result = {"job_id": server.state.job_id, "client_view": client_view(server, round_, view, data=data if benchmark else None,
                                             forget_split=forget_split, limit=limit)}  # fmt: skip
        if knowledge is not None:
            result["functional"] = functional_view(view, knowledge, knowledge_limit)
    if deltas or data:
        result["server_view"] = server_view(
            server, round_, [Path(d) for d in deltas or []], data=data,
            forget_split=forget_split, limit=limit,
        )  # fmt: skip
    if out is not None:
        write(result, Path(out))
    return result


def round_copies(server: Server, round_: int, folder: Path) -> list[Path]:
    """The round's copy folders in `folder`, each checked against what was published: this
    job, this round, a copy id of it, the published weights; all of them, once."""
    from mpu.errors import ConfigError, UpdateRejectedError
    from mpu.io.delta import read_ticket

    records = {r.copy_id: r for r in server.state.copy_records(round_)}
    found = sorted(p for p in folder.glob("copy-*") if p.is_dir())
    if not found:
        raise ConfigError(f"{folder}: no copy-* folders to audit")
    for path in found:
        t = read_ticket(path)
        rec = records.get(t.copy_id)
        if t.job_id != server.state.job_id or t.round != round_ or rec is None:
            raise UpdateRejectedError(f"{path}: a copy of job {t.job_id}, round {t.round}; the "
                                      f"audit is of job {server.state.job_id}, round {round_}")  # fmt: skip
        if rec.folder != path.name or t.weights_sha256 != rec.weights_sha256:
            raise UpdateRejectedError(f"{path}: not the {rec.folder} published in round {round_}")
    if len(found) != len(records):
        raise ConfigError(f"{folder}: {len(found)} of the round's {len(records)} copies; the "
                          "audit needs all of them")  # fmt: skip
    return found


def _published_round(server: Server, workdir, round_: int | None) -> int:
    """The round to audit: the one asked for, which must have been published, or the latest."""
    from mpu.errors import ConfigError

    published = sorted(int(r) for r in server.state.copies)
    if not published:
        raise ConfigError(f"{workdir}: no round has been published yet: nothing to audit")
    if round_ is None:
        return published[-1]
    if round_ not in published:
        raise ConfigError(f"{workdir}: round {round_} was not published (published: {published})")
    return round_


def functional_view(view: RoundView, knowledge: str | Path, limit: int,
                    anchors: dict | None = None) -> dict:  # fmt: skip
    """L of each copy as published and of the client's reconstructions (leakage.functional;
    `anchors`: θ's and the base's scores kept across calls on the same θ, base and items)."""
    from mpu.server.leakage import functional as F

    items = F.knowledge(view.theta_dir, knowledge, limit)
    recs = {"one_copy_aligned": view.with_base["one"], "all_copies_with_base": view.with_base["all"],
            "all_copies_without_base": view.no_base["all"]}  # fmt: skip
    out = F.functional_view(view.theta_dir, view.theta, view.base, view.copies, recs, items,
                            anchors)  # fmt: skip
    if any(c is None for c in view.rename.values()):
        _at_emulator_depth(out, view, items)
    return out


def _at_emulator_depth(out: dict, view: RoundView, items) -> None:
    """An emulator round's copies lack some of θ's blocks. The client can fill the gaps with
    the base's blocks (full depth: scored as `all_copies_with_base`) or run its combination of
    the copies at the copies' own depth, which a distilled middle was trained to work at. The
    round's `all_copies_with_base` becomes the better of the two; both are kept."""
    from mpu.server.leakage import functional as F
    from mpu.server.leakage.models import model_with

    weights = {c: view.with_base["all"][n] for n, c in view.rename.items() if c is not None}
    scores = F.score(model_with(view.copies[0], weights), items)
    short = F.leakage(scores, out["scores"]["theta"], out["scores"]["base"])
    filled = out["all_copies_with_base"]
    out["all_copies_base_filled"], out["all_copies_at_emulator_depth"] = filled, short
    out["all_copies_with_base"] = {k: max(filled[k], short[k]) for k in F.SCORES}

"""The server's signed transcript (`W/audit.log`) and `mpu verify` (docs/audit-log.md).

Every command that makes an artifact appends one entry signed with the job's Ed25519 key
(`W/audit.key`, 0600; the public half in `W/audit.pub` and in the init entry):

- `init`: commitments of θ_1 and the public base, the job's public settings;
- `publish` (round r): θ_r's commitment and each copy's (folder, copy id, commitment);
- `aggregate` (round r): θ_r, each update received (copy id, commitment, where it was read) and
  θ_{r+1};
- `export`: the exported folder's commitment.

Entries hold no secret: no key, seed, α or copy → k assignment (copies are listed by folder,
whose order is key-derived). `verify` re-checks the chain and signatures, then replays the job:
every θ_r and θ_{r+1} on disk against its commitment, every copy regenerated from the key
against its commitment, every update against its commitment, and every Post-Process recomputed
from the logged inputs and compared bit for bit with the logged θ_{r+1}.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mpu.io.transcript import (
    SigningKey,
    Transcript,
    TranscriptError,
    check_receipt,
    commitment,
)

LOG_FILE = "audit.log"
KEY_FILE = "audit.key"
PUBLIC_FILE = "audit.pub"
PUBLIC_SETTINGS = ("copies", "kappa", "noise_scale", "reparameterize", "residual", "seeds")


def transcript(workdir: Path) -> Transcript:
    return Transcript(Path(workdir) / LOG_FILE)


def start(workdir: Path, *, job_id: str, theta: str, base: str, config: dict) -> None:
    """A new job's key and first entry (anything left by an init that crashed is replaced).
    `theta`, `base`: the commitments of θ_1 and of the public base."""
    for name in (LOG_FILE, KEY_FILE, PUBLIC_FILE):
        (workdir / name).unlink(missing_ok=True)
    key = SigningKey.create(workdir / KEY_FILE)
    (workdir / PUBLIC_FILE).write_text(key.public_hex + "\n")
    transcript(workdir).append(
        key,
        "init",
        job_id=job_id,
        public_key=key.public_hex,
        model=theta,
        base=base,
        settings={k: config[k] for k in PUBLIC_SETTINGS if k in config},
    )


def _key(workdir: Path) -> SigningKey | None:
    """The job's key; None for a workdir made before the audit log (nothing is logged)."""
    path = Path(workdir) / KEY_FILE
    return SigningKey(path) if path.is_file() else None


def record(workdir: Path, event: str, **fields) -> int:
    """Sign and append one entry; returns its sequence number (0 for a job without a log),
    which the state keeps so that `verify` notices entries removed from the log's end."""
    key = _key(workdir)
    if key is None:
        return 0
    return int(transcript(workdir).append(key, event, **fields)["seq"])


def copy_entries(records) -> list[dict]:
    """The copies' entries, by folder; commitments computed by the writers as they wrote."""
    return [
        {"folder": r.folder, "copy_id": r.copy_id, "commitment": r.commitment}
        for r in sorted(records, key=lambda r: r.folder)
    ]


def delta_entries(matched, commitments: dict[str, str]) -> list[dict]:
    """The updates' entries, by copy id; commitments computed as the aggregation read them."""
    return [
        {"copy_id": rec.copy_id, "commitment": commitments[rec.copy_id],
         "path": str(d.path.resolve())}
        for rec, d in sorted(matched, key=lambda x: x[0].copy_id)
    ]  # fmt: skip


# ---------------------------------------------------------------- verify
def _find(path: str, search: Sequence[Path]) -> Path | None:
    """An update by its logged path; folders given with --deltas are looked in first (by the
    file's folder and name, or its name), for updates that were moved."""
    p = Path(path)
    for d in search:
        for cand in (d / p.parent.name / p.name, d / p.name):
            if cand.is_file():
                return cand
    return p if p.is_file() else None


def verify(
    workdir: str | Path,
    *,
    deltas: Sequence[str | Path] = (),
    receipts: Sequence[str | Path] = (),
    public_key: str | None = None,
    replay: bool = True,
) -> dict:
    """Check the transcript of `workdir` and replay it; raises TranscriptError naming the first
    bad entry. Returns a summary (entries, rounds replayed, head hash)."""
    from mpu.server.job import Server
    from mpu.server.state import round_dir

    workdir = Path(workdir)
    log = transcript(workdir)
    pinned = public_key or _pinned(workdir)
    entries = log.check(pinned)
    server = Server(workdir)
    if server.state.log_seq > len(entries):
        raise TranscriptError(
            f"{log.path}: {len(entries)} entries, but the job recorded entry "
            f"{server.state.log_seq} (lines removed from the end of the transcript)"
        )
    search = [Path(d) for d in deltas]
    replayed = 0
    for n, e in enumerate(entries, start=1):
        where = f"{log.path}: line {n} ({e['event']}{' round ' + str(e['round']) if 'round' in e else ''})"

        def same(path: Path, expected: str, what: str, where=where) -> None:
            if not Path(path).exists():
                raise TranscriptError(f"{where}: {what} {path} is gone")
            if commitment(path) != expected:
                raise TranscriptError(f"{where}: {what} {path} does not match its commitment")

        if e["event"] == "init":
            if e.get("job_id") != server.state.job_id:
                raise TranscriptError(
                    f"{where}: names job {e.get('job_id')!r}, the workdir holds {server.state.job_id!r}"
                )
            same(round_dir(workdir, 1), e["model"], "θ_1")
        elif e["event"] == "publish":
            same(round_dir(workdir, e["round"]), e["theta"], "θ_r")
            if replay:
                _replay_publish(server, e, where)
        elif e["event"] == "aggregate":
            same(round_dir(workdir, e["round"]), e["theta"], "θ_r")
            same(round_dir(workdir, e["round"] + 1), e["result"], "θ_{r+1}")
            files = []
            for d in e["deltas"]:
                found = _find(d["path"], search)
                if found is None:
                    raise TranscriptError(
                        f"{where}: update {d['path']} is gone (pass its folder with --deltas)"
                    )
                same(found, d["commitment"], "update")
                files.append(found)
            if replay:
                _replay_aggregate(server, e, files, where)
                replayed += 1
        elif e["event"] == "export" and Path(e["path"]).exists():
            same(Path(e["path"]), e["commitment"], "export")
    _check_covered(server, entries, log.path)
    checked_receipts = _check_receipts(entries, receipts, log.path)
    return {
        "entries": len(entries),
        "rounds_replayed": replayed,
        "receipts": checked_receipts,
        "public_key": entries[0]["public_key"],
        "head": log.head(),
    }  # fmt: skip


def _pinned(workdir: Path) -> str | None:
    path = workdir / PUBLIC_FILE
    return path.read_text().strip() if path.is_file() else None


def _replay_publish(server, entry: dict, where: str) -> None:
    with tempfile.TemporaryDirectory(prefix=".verify-", dir=server.workdir) as tmp:
        folders = server.regenerate(entry["round"], Path(tmp) / "copies")
        records = sorted(server.state.copy_records(entry["round"]), key=lambda r: r.folder)
        got = [{"folder": f.name, "copy_id": r.copy_id, "commitment": commitment(f)}
               for f, r in zip(folders, records, strict=False)]  # fmt: skip
    if got != entry["copies"]:
        bad = next((g["folder"] for g, x in zip(got, entry["copies"], strict=False) if g != x), "?")
        raise TranscriptError(
            f"{where}: copy {bad} regenerated from the key differs from the one logged"
        )


def _replay_aggregate(server, entry: dict, files: list[Path], where: str) -> None:
    """Post-Process again from θ_r, the logged updates and the key; θ_{r+1} must match bit for bit."""
    quiet = logging.getLogger("mpu.server")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the replay is not a new aggregation: say nothing of it
    try:
        recomputed = server.replay(entry["round"], files)
    finally:
        quiet.setLevel(level)
    if recomputed != entry["result"]:
        raise TranscriptError(f"{where}: recomputing Post-Process from the logged updates does "
                              "not give the logged θ_{r+1}")  # fmt: skip


def _check_covered(server, entries: list[dict], path: Path) -> None:
    """Every round the state says was published / aggregated has its entry."""
    logged = {(e["event"], e.get("round")) for e in entries}
    for r in sorted(int(k) for k in server.state.copies):
        if ("publish", r) not in logged:
            raise TranscriptError(
                f"{path}: round {r} was published but the transcript does not say so (lines removed?)"
            )
    for r in range(1, server.round):
        if ("aggregate", r) not in logged:
            raise TranscriptError(
                f"{path}: round {r} was aggregated but the transcript does not say so (lines removed?)"
            )


def _check_receipts(entries: list[dict], receipts: Sequence[str | Path], path: Path) -> int:
    """Each client receipt is signed, and its copy and update are the ones the server logged."""
    copies = {
        (e["round"], c["copy_id"]): c["commitment"]
        for e in entries
        if e["event"] == "publish"
        for c in e["copies"]
    }
    updates = {
        (e["round"], d["copy_id"]): d["commitment"]
        for e in entries
        if e["event"] == "aggregate"
        for d in e["deltas"]
    }
    files = []
    for r in receipts:
        found = sorted(Path(r).rglob("receipt.json")) if Path(r).is_dir() else [Path(r)]
        if not found:  # a receipt asked for and not there is not a receipt that checked out
            raise TranscriptError(f"{r}: no receipt.json in this folder")
        files += found
    for f in files:
        try:
            obj = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise TranscriptError(f"{f}: not a readable receipt") from None
        rc = check_receipt(obj, str(f))
        key = (rc["round"], rc["copy_id"])
        if copies.get(key) != rc["copy"]:
            raise TranscriptError(f"{f}: the copy the client received is not the one {path} logged")
        if key in updates and updates[key] != rc["delta"]:
            raise TranscriptError(
                f"{f}: the update the server used is not the one the client returned"
            )
    return len(files)

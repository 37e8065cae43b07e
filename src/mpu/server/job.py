"""`Server`: one MPU job over a Hugging Face checkpoint — init, publish, aggregate, export.

This is the Python API under `mpu server …`. Secrets (master key, α, the copy id → k map, σ)
stay in the workdir's 0600 state file; copies and logs carry none of them. Every command takes
the workdir's lock first and only then reads the state, cleans what a crashed command left
(staging folders, temp files) and works; the state is written last, so a command killed at any
point is simply run again. A rerun of an interrupted publication writes byte-identical copies:
copy ids, the folder → k assignment, the noise and the maps are all derived from the key.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from mpu.arch import layout_of, load_config
from mpu.arch.base import Layout
from mpu.config import load_config as load_typed_config
from mpu.devices import resolve_device
from mpu.errors import CheckpointError, ConfigError
from mpu.io.checkpoint import (
    Checkpoint,
    CheckpointWriter,
    atomic_folder,
    clean_debris,
    retype_layout,
)
from mpu.io.memory import reuse_freed_buffers
from mpu.io.transcript import combine, commitment
from mpu.protocol.rng import PaperStreams, SecretStreams, new_master_key
from mpu.server import audit_log
from mpu.server.aggregate import aggregate_updates, match_deltas
from mpu.server.config import JobConfig, alpha_range, draw_alphas
from mpu.server.emulator import EmulatedDelta, emulator_of
from mpu.server.publish import (
    DTYPES,
    check_noise_floor,
    check_sigmas,
    publication_dtype,
    publish_copies,
    scan,
)
from mpu.server.state import (
    STATE_FILE,
    CopyRecord,
    ServerState,
    load_state,
    locked,
    round_dir,
    save_state,
)

log = logging.getLogger("mpu.server")
STAGING = "staging"  # workdir subfolder where copies are built before they move to the outbox


def classify(ck: Checkpoint, config=None) -> Layout:
    """The checkpoint's tensors classified by the architecture adapter (reads the config unless
    the caller already has it)."""
    config = config if config is not None else load_config(ck.path)
    return layout_of(config, {n: ck.spec(n).shape for n in ck.names()}, str(ck.path))


def _add_log_file(workdir: Path) -> logging.Handler:
    handler = logging.FileHandler(workdir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


class Server:
    """A server job living in `workdir`. Create with `Server.init(...)`, reopen with `Server(workdir)`."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        if not (self.workdir / STATE_FILE).is_file():
            load_state(self.workdir)  # raises the "not a workdir" error
        with locked(self.workdir):
            self._reload()

    def _reload(self) -> None:
        self.state = load_state(self.workdir)
        self.cfg = load_typed_config(JobConfig, mapping=self.state.config)

    @contextmanager
    def _command(self):
        """Lock, re-read the state (another command may have advanced it), clean crash debris,
        log to the workdir; tensor buffers are reused within the command (`mpu.io.memory`)."""
        with reuse_freed_buffers(), locked(self.workdir):
            self._reload()
            clean_debris(self.workdir / "rounds")
            clean_debris(self.workdir / STAGING)
            handler = _add_log_file(self.workdir)
            try:
                yield
            finally:
                log.removeHandler(handler)

    # ---------------------------------------------------------------- init
    @classmethod
    def init(
        cls, model: str | Path, base: str | Path, workdir: str | Path, cfg: JobConfig | None = None
    ) -> Server:
        """Check model and base, run the gate, copy θ_1 into a fresh workdir and create the secret state."""
        cfg = cfg or JobConfig()
        workdir = Path(workdir)
        if workdir.exists() and not workdir.is_dir():
            raise ConfigError(f"{workdir}: exists and is not a folder")
        created = not workdir.exists()
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        with locked(workdir):  # two inits racing on one workdir: the second one is refused
            if (workdir / STATE_FILE).exists():
                raise ConfigError(f"{workdir}: already holds an MPU job; use a new workdir")
            clean_debris(workdir)
            clean_debris(workdir / "rounds")
            try:
                state = cls._create(Path(model), Path(base), workdir, cfg)
            except BaseException:
                if created:  # bad input loses nothing and leaves nothing: the folder is ours
                    shutil.rmtree(workdir, ignore_errors=True)
                raise
        handler = _add_log_file(workdir)
        try:
            layout = Layout.from_json(state.layout)
            log.info("job %s initialised: %s adapter, %d blocks, m=%d, kappa=%g", state.job_id,
                     layout.spec.family, layout.geometry.n_layers, cfg.copies, cfg.kappa)  # fmt: skip
            if cfg.kappa == 0 and cfg.reparameterize:
                log.warning(
                    "kappa = 0: reparameterization only, no noise (an ablation, not a privacy setting)"
                )
            elif cfg.kappa == 0:
                log.info(
                    "kappa = 0 and no reparameterization: copies are θ itself (the Clean baseline)"
                )
            if cfg.seeds == "paper_public":
                log.warning(
                    "seeds = paper_public: anyone can regenerate the noise and transforms (reference defect B2)"
                )
        finally:
            log.removeHandler(handler)
        return cls(workdir)

    @classmethod
    def _create(cls, model: Path, base: Path, workdir: Path, cfg: JobConfig) -> ServerState:
        theta, base_ck = Checkpoint(model), Checkpoint(base)
        config = load_config(theta.path)  # read once: the layout and the gate both need it
        layout = classify(theta, config)
        emulator_of(cfg, layout)  # an emulator the model cannot hold is refused now
        cls._check_base(theta, base_ck, layout)
        dtypes = {str(theta.spec(n).dtype).removeprefix("torch.") for n in theta.names()}
        if len(dtypes) != 1:
            raise CheckpointError(
                f"{model}: mixed tensor dtypes {sorted(dtypes)} are not supported"
            )
        leaves: dict[str, dict] = {"theta": {}, "base": {}}  # the audit log's commitments
        sigmas, norms = scan(theta, base_ck, layout, cfg, leaves=leaves)  # refuses NaN/Inf
        if publication_dtype(cfg, theta) in DTYPES:  # else publish refuses the dtype itself
            check_noise_floor(theta, layout, cfg, sigmas, norms, alpha_range(cfg)[0],
                              DTYPES[publication_dtype(cfg, theta)])  # fmt: skip
        gate = cls._gate(theta, layout, cfg, config) if cfg.gate and cfg.reparameterize else None
        # replaces an r001 left by an init that crashed before its state write
        with atomic_folder(round_dir(workdir, 1)) as stage:
            for p in theta.path.iterdir():
                if p.is_file():
                    shutil.copyfile(p, stage / p.name)
        state = ServerState(
            job_id=secrets.token_hex(8),
            key_hex=new_master_key().hex(),
            round=1,
            config=asdict(cfg),
            model_dir=str(model.resolve()),
            base_dir=str(base.resolve()),
            checkpoint_dtype=dtypes.pop(),
            layout=layout.to_json(),
            sigmas={"1": sigmas},
            theta_norms={"1": norms},
        )
        if gate is not None:  # what init checked, for `mpu server init` to say
            state.history.append({"round": 0, "event": "gate", **asdict(gate)})
        state.commitments["1"] = combine(leaves["theta"])
        if (
            cfg.emulator_distill_steps
            or cfg.emulator_distilled_from
            or cfg.emulator == "base_middle"
        ):
            state.history.append(cls._distil(state, layout, workdir, cfg))  # once, as the job
        state.log_seq = 1
        audit_log.start(workdir, job_id=state.job_id, theta=state.commitments["1"],
                        base=combine(leaves["base"]), config=asdict(cfg))  # fmt: skip
        save_state(workdir, state)
        return state

    @staticmethod
    def _check_base(theta: Checkpoint, base: Checkpoint, layout: Layout) -> None:
        """The base is of θ's family with every tensor of the same name and shape: the same
        layout."""
        base_type = base.config.get("model_type")
        if base_type != theta.config.get("model_type"):
            raise CheckpointError(
                f"{base.path}: base is a {base_type!r} model, the model a "
                f"{theta.config.get('model_type')!r}"
            )
        for name in theta.names():
            if name in layout.tied:
                continue
            if name not in base.file_of or base.spec(name).shape != theta.spec(name).shape:
                raise CheckpointError(
                    f"{base.path}: base tensor {name!r} missing or of another shape than the model's"
                )

    @staticmethod
    def _distil(state: ServerState, layout: Layout, workdir: Path, cfg: JobConfig) -> dict:
        """The emulator's published middle blocks (mpu.server.distill), distilled towards θ_1,
        reused from an earlier job, or (base_middle) the base's own; its record."""
        from mpu.server.distill import (
            distil_emulator,
            distilled_path,
            reuse_emulator,
            write_base_middle,
        )

        emulator, out, theta = (
            emulator_of(cfg, layout),
            distilled_path(workdir),
            state.commitments["1"],
        )
        if cfg.emulator == "base_middle":
            return write_base_middle(Path(state.base_dir), Checkpoint(round_dir(workdir, 1)),
                                     emulator, layout, out=out, theta_commitment=theta)  # fmt: skip
        if cfg.emulator_distilled_from:
            return reuse_emulator(Path(cfg.emulator_distilled_from), out, emulator, theta)
        streams = PaperStreams() if cfg.seeds == "paper_public" else SecretStreams(state.key)
        return distil_emulator(round_dir(workdir, 1), Path(state.base_dir), emulator,
                               layout.spec.block_prefix, cfg, out=out, theta_commitment=theta,
                               seed=streams.seed(1, "emulator-distill"))  # fmt: skip

    @staticmethod
    def _gate(theta: Checkpoint, layout: Layout, cfg: JobConfig, config):
        from mpu.server.gate import run_gate

        result = run_gate(theta, layout, cfg, config)
        log.info("function-preservation gate passed: %s", result.describe())
        return result

    # ---------------------------------------------------------------- helpers
    @property
    def round(self) -> int:
        return self.state.round

    def secret_streams(self):
        """The job's random streams (noise, maps, residual), derived from the secret key — or the
        paper's public seeds under `seeds=paper_public`. Server-side only: whoever holds them
        can undo every copy. The audit and the transcript's replay read them from here."""
        return PaperStreams() if self.cfg.seeds == "paper_public" else SecretStreams(self.state.key)

    def _round_alphas(self) -> list[float]:
        key = str(self.round)
        if key not in self.state.alphas:
            alphas = draw_alphas(self.cfg)
            self.cfg.check_weights(alphas, f"round {self.round}'s α")
            self.state.alphas[key] = alphas
        return self.state.alphas[key]

    def _new_records(self) -> list[CopyRecord]:
        """The round's copy ids and folder → k assignment, derived from the secret key.

        Derived rather than drawn, so an interrupted publication is repeated byte for byte
        and nothing is saved before it succeeds. The folder → k assignment is the same in
        every round: a client pairs a round-r copy with its round-1 reference by folder name
        (policy first_round_copy) without learning k, and the reference's noise then carries
        the copy's α, which the harmonic weights need to cancel it (docs/protocol.md §6).
        """
        keyed = SecretStreams(self.state.key)
        gen = torch.Generator().manual_seed(keyed.seed(1, "copy-folders"))
        order = torch.randperm(self.cfg.copies, generator=gen).tolist()
        return [
            CopyRecord(f"{keyed.seed(self.round, 'copy-id', k):016x}", k, f"copy-{i + 1}")
            for i, k in enumerate(order)
        ]

    def theta(self) -> Checkpoint:
        return Checkpoint(round_dir(self.workdir, self.round))

    def _commitment(self, round_: int) -> str:
        """θ_r's commitment: kept in the state since θ_r was written (computed for older jobs)."""
        key = str(round_)
        if key not in self.state.commitments:
            self.state.commitments[key] = commitment(round_dir(self.workdir, round_))
        return self.state.commitments[key]

    def layout(self, theta: Checkpoint | None = None) -> Layout:
        """The job's layout from the state (classified once at init), checked against θ's tensors."""
        theta = theta or self.theta()
        if self.state.layout is None:  # a workdir from before the layout cache
            self.state.layout = classify(theta).to_json()
        layout = Layout.from_json(self.state.layout)
        if list(layout.tensors) != theta.names():
            raise CheckpointError(
                f"{theta.path}: its tensors differ from the job's model (workdir edited by hand?)"
            )
        return layout

    # ---------------------------------------------------------------- publish
    def publish(self, out_dir: str | Path, *, progress: bool = True) -> list[Path]:
        """Write copy-1 … copy-m of the current round under `out_dir`."""
        out_dir = Path(out_dir)
        with self._command():
            theta = self.theta()
            layout = self.layout(theta)
            if out_dir.exists() and not out_dir.is_dir():
                raise ConfigError(f"{out_dir}: exists and is not a folder")
            self._check_outbox(out_dir)
            key = str(self.round)
            sigmas, norms = self.state.sigmas.get(key), self.state.theta_norms.get(key)
            if sigmas is None or norms is None:  # computed at init / by the previous aggregation
                sigmas, norms = scan(theta, Checkpoint(self.state.base_dir), layout, self.cfg)
            check_sigmas(sigmas, self.cfg, Path(self.state.base_dir))
            alphas = self._round_alphas()
            if self._publication_dtype() in DTYPES:
                check_noise_floor(theta, layout, self.cfg, sigmas, norms, min(alphas),
                                  DTYPES[self._publication_dtype()])  # fmt: skip
            records = self.state.copy_records(self.round) or self._new_records()
            self._clear_interrupted(out_dir, records)
            stats = self._write_copies(self.round, alphas, records, sigmas, out_dir, progress)
            folders = [out_dir / r.folder for r in sorted(records, key=lambda r: r.folder)]
            self.state.log_seq = audit_log.record(self.workdir, "publish", round=self.round,
                             theta=self._commitment(self.round),
                             copies=audit_log.copy_entries(records))  # fmt: skip
            self.state.copies[key] = [asdict(r) for r in records]
            self.state.sigmas[key] = sigmas
            self.state.theta_norms[key] = norms
            self.state.history.append({"round": self.round, "event": "publish", "copies": stats})
            save_state(self.workdir, self.state)
            log.info("round %d: published %d copies to %s", self.round, len(records), out_dir)
            return folders

    def publication_source(self, round_: int) -> Checkpoint:
        """θ_r as the copies are made from it: θ_r itself, or with a distilled emulator its
        middle blocks read from the distilled file (checked against the hash recorded at init)."""
        theta_dir = round_dir(self.workdir, round_)
        done = [h for h in self.state.history if h.get("event") == "distill"]
        if not done:
            return Checkpoint(theta_dir)
        from mpu.server.distill import DistilledTheta, distilled_path

        return DistilledTheta(theta_dir, distilled_path(self.workdir), done[-1]["sha256"])

    def _write_copies(self, round_, alphas, records, sigmas, out_dir: Path, progress: bool) -> dict:
        theta = self.publication_source(round_)
        dtype_name = self._publication_dtype()
        if dtype_name not in DTYPES:
            raise ConfigError(f"cannot publish in dtype {dtype_name!r}")
        out_dir.mkdir(parents=True, exist_ok=True)
        clean_debris(out_dir)
        (self.workdir / STAGING).mkdir(exist_ok=True)
        return publish_copies(
            theta,
            self.layout(theta),
            streams=self.secret_streams(),
            round_=round_,
            alphas=alphas,
            records=records,
            sigmas=sigmas,
            cfg=self.cfg,
            out_dir=out_dir,
            publish_dtype=DTYPES[dtype_name],
            job_id=self.state.job_id,
            key=self.state.key,
            progress=progress,
            stage_in=self.workdir / STAGING,
            device=resolve_device(self.cfg.device),
        )

    def _check_outbox(self, out_dir: Path) -> None:
        """Copies never go where the server keeps its own files: the workdir itself, its rounds
        (θ_r; the next aggregation replaces folders there) or its staging area."""
        out, work = out_dir.resolve(), self.workdir.resolve()
        managed = [work / "rounds", work / STAGING]
        if out == work or any(out == m or m in out.parents for m in managed):
            raise ConfigError(
                f"{out_dir}: inside the server's own files ({work}); publish the copies to a "
                "folder outside the workdir's rounds/ and staging/"
            )

    def _publication_dtype(self) -> str:
        return (
            self.state.checkpoint_dtype
            if self.cfg.publish_dtype == "checkpoint"
            else self.cfg.publish_dtype
        )

    def regenerate(self, round_: int, out_dir: str | Path) -> list[Path]:
        """The copies of an already published round, written again byte for byte (for an audit);
        the state is not changed. Needs that round's θ, which the workdir keeps."""
        with self._command():
            key = str(round_)
            records = self.state.copy_records(round_)
            if not records or not (round_dir(self.workdir, round_) / "config.json").is_file():
                raise ConfigError(
                    f"{self.workdir}: round {round_} was not published or its model is gone"
                )
            self._write_copies(
                round_,
                self.state.alphas[key],
                records,
                self.state.sigmas[key],
                Path(out_dir),
                False,
            )
            return [Path(out_dir) / r.folder for r in sorted(records, key=lambda r: r.folder)]

    def _clear_interrupted(self, out_dir: Path, records: list[CopyRecord]) -> None:
        """Copies of this very round left by an interrupted publication are replaced (they are
        regenerated byte for byte); any other folder in the way is an error, never clobbered."""
        from mpu.errors import UpdateRejectedError
        from mpu.io.delta import read_ticket

        for rec in records:
            folder = out_dir / rec.folder
            if not folder.exists():
                continue
            try:
                t = read_ticket(folder)
                ours = (t.job_id, t.round, t.copy_id) == (
                    self.state.job_id,
                    self.round,
                    rec.copy_id,
                )
            except UpdateRejectedError:
                ours = False
            if not ours:
                raise ConfigError(f"{folder}: already exists; publish into an empty folder")
            shutil.rmtree(folder)

    # ---------------------------------------------------------------- aggregate
    def aggregate(self, delta_paths: list[str | Path], *, progress: bool = True) -> dict:
        """Validate and fold the round's m updates into θ_{r+1}; advances the round."""
        with self._command():
            records = self.state.copy_records(self.round)
            if not records or not all(r.weights_sha256 for r in records):
                raise ConfigError(f"{self.workdir}: round {self.round} has not been published yet")
            theta = self.theta()
            matched = match_deltas(
                [Path(p) for p in delta_paths],
                job_id=self.state.job_id,
                round_=self.round,
                records=records,
                key=self.state.key,
                max_tensors=len(theta.names()),
            )
            out = round_dir(self.workdir, self.round + 1)
            if out.exists():  # left by a crash after the commit but before the state write
                shutil.rmtree(out)
            stats, sigmas, norms = self._post_process(self.round, matched, out, progress)
            commitments = stats.pop("commitments")
            self.state.log_seq = audit_log.record(self.workdir, "aggregate", round=self.round,
                             theta=self._commitment(self.round),
                             deltas=audit_log.delta_entries(matched, commitments["deltas"]),
                             result=commitments["result"])  # fmt: skip
            self.state.commitments[str(self.round + 1)] = commitments["result"]
            self.state.sigmas[str(self.round + 1)] = sigmas  # for the next publication
            self.state.theta_norms[str(self.round + 1)] = norms
            self.state.history.append({"round": self.round, "event": "aggregate", **stats})
            stats["commitments"] = commitments
            self.state.round += 1
            save_state(self.workdir, self.state)
            return stats

    def _post_process(self, round_: int, matched, out: Path, progress: bool):
        """Fold the matched updates of `round_` into θ_{round_+1} at `out` (nothing else)."""
        theta = Checkpoint(round_dir(self.workdir, round_))
        layout = self.layout(theta)
        emulator = emulator_of(self.cfg, layout)
        if emulator is not None:  # the adapter's updates, in θ's names; the rest is zero
            matched = [(rec, EmulatedDelta(d, emulator, layout, theta)) for rec, d in matched]
            log.info("emulator copies: only the %d outer blocks at each end (and the tensors "
                     "outside the blocks) are updated", emulator.outer)  # fmt: skip
        return aggregate_updates(
            theta,
            layout,
            matched,
            streams=self.secret_streams(),
            round_=round_,
            alphas=self.state.alphas[str(round_)],
            cfg=self.cfg,
            out=out,
            progress=progress,
            theta_norms=self.state.theta_norms.get(str(round_)),
            device=resolve_device(self.cfg.device),
            base=Checkpoint(self.state.base_dir),
        )

    def replay(self, round_: int, delta_paths: list[Path]) -> str:
        """Post-Process of an aggregated round computed again from θ_r, the given updates and
        the key, in a scratch folder inside the workdir; returns θ_{r+1}'s commitment (which
        `mpu verify` compares with the logged one). The state and θ_{r+1} are not touched."""
        import tempfile

        theta = Checkpoint(round_dir(self.workdir, round_))
        matched = match_deltas(
            [Path(p) for p in delta_paths],
            job_id=self.state.job_id,
            round_=round_,
            records=self.state.copy_records(round_),
            key=self.state.key,
            max_tensors=len(theta.names()),
        )
        with tempfile.TemporaryDirectory(prefix=".verify-", dir=self.workdir) as tmp:
            stats, _, _ = self._post_process(round_, matched, Path(tmp) / "theta", False)
        return stats["commitments"]["result"]

    # ---------------------------------------------------------------- export
    def export(self, out_dir: str | Path, *, dtype: str | None = None) -> Path:
        """The current θ_r as a Hugging Face folder, in the checkpoint's dtype unless told otherwise."""
        with self._command():
            name = dtype or self.state.checkpoint_dtype
            if name not in DTYPES:
                raise ConfigError(f"export dtype must be one of {sorted(DTYPES)}, got {name!r}")
            out_dir = Path(out_dir)
            clean_debris(out_dir.parent, only=out_dir.name)
            theta = self.theta()
            writer = CheckpointWriter(
                out_dir,
                retype_layout(theta.layout(), {n: DTYPES[name] for n in theta.names()}),
                aux_from=theta,
                config_updates={"dtype": name},
                hash_tensors=True,
            )
            try:
                for tensor_name in theta.names():
                    writer.add(tensor_name, theta.read(tensor_name).to(DTYPES[name]))
            except BaseException:
                writer.abort()
                raise
            folder = writer.commit()
            self.state.log_seq = audit_log.record(
                self.workdir, "export", round=self.round, dtype=name,
                path=str(folder.resolve()), commitment=writer.commitment)  # fmt: skip
            save_state(self.workdir, self.state)
            return folder

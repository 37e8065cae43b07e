"""`Server`: one MPU job over a Hugging Face checkpoint — init, publish, aggregate, export.

This is the Python API under `mpu server …`. Secrets (master key, α, the copy id → k map, σ)
stay in the workdir's 0600 state file; copies and logs carry none of them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from mpu.arch import layout_of, load_config
from mpu.arch.base import Layout
from mpu.config import load_config as load_typed_config
from mpu.errors import CheckpointError, ConfigError
from mpu.io.checkpoint import Checkpoint, CheckpointWriter, atomic_folder, retype_layout
from mpu.io.memory import pin_mmap_threshold
from mpu.protocol.noise import default_alphas, validate_alphas
from mpu.protocol.rng import PaperStreams, SecretStreams, new_master_key
from mpu.server.aggregate import aggregate_updates, match_deltas
from mpu.server.config import JobConfig
from mpu.server.publish import DTYPES, compute_sigmas, publish_copies
from mpu.server.state import CopyRecord, ServerState, load_state, locked, round_dir, save_state

log = logging.getLogger("mpu.server")


def _layout(ck: Checkpoint) -> Layout:
    config = load_config(ck.path)
    return layout_of(config, {n: ck.spec(n).shape for n in ck.names()}, str(ck.path))


def _add_log_file(workdir: Path) -> logging.Handler:
    handler = logging.FileHandler(workdir / "server.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


class Server:
    """A server job living in `workdir`. Create with `Server.init(...)`, reopen with `Server(workdir)`."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.state = load_state(self.workdir)
        self.cfg = load_typed_config(JobConfig, mapping=self.state.config)

    # ---------------------------------------------------------------- init
    @classmethod
    def init(
        cls, model: str | Path, base: str | Path, workdir: str | Path, cfg: JobConfig | None = None
    ) -> Server:
        """Check model and base, run the gate, copy θ_1 into a fresh workdir and create the secret state."""
        cfg = cfg or JobConfig()
        workdir = Path(workdir)
        if (workdir / "state.json").exists():
            raise ConfigError(f"{workdir}: already holds an MPU job; use a new workdir")
        theta, base_ck = Checkpoint(model), Checkpoint(base)
        layout = _layout(theta)
        base_layout = _layout(base_ck)
        if base_layout.geometry != layout.geometry or base_layout.spec.family != layout.spec.family:
            raise CheckpointError(
                f"{base}: base layout {base_layout.geometry} differs from the model's {layout.geometry}"
            )
        for name in theta.names():
            if name in layout.tied:
                continue
            if name not in base_ck.file_of or base_ck.spec(name).shape != theta.spec(name).shape:
                raise CheckpointError(
                    f"{base}: base tensor {name!r} missing or of another shape than the model's"
                )
        dtypes = {str(theta.spec(n).dtype).removeprefix("torch.") for n in theta.names()}
        if len(dtypes) != 1:
            raise CheckpointError(
                f"{model}: mixed tensor dtypes {sorted(dtypes)} are not supported"
            )
        if cfg.gate and cfg.reparameterize:
            cls._gate(theta, layout, cfg)
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o700)
        # replaces an r001 left by an init that crashed before its state write
        with atomic_folder(round_dir(workdir, 1)) as stage:
            shutil.copytree(theta.path, stage, dirs_exist_ok=True)
        state = ServerState(
            job_id=secrets.token_hex(8),
            key_hex=new_master_key().hex(),
            round=1,
            config=asdict(cfg),
            model_dir=str(Path(model).resolve()),
            base_dir=str(Path(base).resolve()),
            checkpoint_dtype=dtypes.pop(),
        )
        save_state(workdir, state)
        (workdir / ".lock").touch(mode=0o600)
        handler = _add_log_file(workdir)
        log.info(
            "job %s initialised: %s adapter, %d blocks, m=%d, kappa=%g",
            state.job_id,
            layout.spec.family,
            layout.geometry.n_layers,
            cfg.copies,
            cfg.kappa,
        )
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
        log.removeHandler(handler)
        return cls(workdir)

    @staticmethod
    def _gate(theta: Checkpoint, layout: Layout, cfg: JobConfig) -> None:
        from transformers import AutoModelForCausalLM

        from mpu.protocol.reparam import sample_block_transform
        from mpu.server.gate import GATE_TOLERANCE, gate_token_ids, preservation_error

        model = AutoModelForCausalLM.from_pretrained(str(theta.path), dtype=torch.float32)
        gen = torch.Generator().manual_seed(secrets.randbits(62))
        transforms = {
            layer: sample_block_transform(
                layout.geometry, gen, angles=cfg.angles, vo_map=cfg.vo_map
            )
            for layer in layout.blocks
        }
        ids = gate_token_ids(theta.path, model.config.vocab_size)
        err = preservation_error(model, layout, transforms, ids)
        del model
        if not err <= GATE_TOLERANCE:
            raise CheckpointError(
                f"{theta.path}: the {layout.spec.family} reparameterization changes the logits by {err:.2e} "
                f"(relative, > {GATE_TOLERANCE}): refusing to publish copies of this model"
            )
        log.info("function-preservation gate passed: max relative logit error %.2e", err)

    # ---------------------------------------------------------------- helpers
    @property
    def round(self) -> int:
        return self.state.round

    def _streams(self):
        return PaperStreams() if self.cfg.seeds == "paper_public" else SecretStreams(self.state.key)

    def _round_alphas(self) -> list[float]:
        key = str(self.round)
        if key not in self.state.alphas:
            m = self.cfg.copies
            if self.cfg.alphas == "linspace":
                alphas = default_alphas(m)
            elif self.cfg.alphas == "random":
                rng = secrets.SystemRandom()
                alphas = [rng.uniform(self.cfg.alpha_min, self.cfg.alpha_max) for _ in range(m)]
            else:
                alphas = validate_alphas([float(a) for a in self.cfg.alphas.split(",")], m)
            self.state.alphas[key] = alphas
        return self.state.alphas[key]

    def _new_records(self) -> list[CopyRecord]:
        """Fresh random copy ids; the folder → k assignment is drawn once per job (round 1).

        Keeping `copy-i` on the same k in every round lets a client pair a round-r copy with
        its round-1 reference by folder name (policy first_round_copy) without learning k, and
        then the reference's noise carries the same α as the copy's, which the harmonic
        weights need to cancel it (docs/protocol.md).
        """
        first = self.state.copy_records(1)
        if first:
            order = [r.k for r in sorted(first, key=lambda r: int(r.folder.split("-")[1]))]
        else:
            order = list(range(self.cfg.copies))
            secrets.SystemRandom().shuffle(order)
        return [CopyRecord(secrets.token_hex(8), k, f"copy-{i + 1}") for i, k in enumerate(order)]

    def theta(self) -> Checkpoint:
        return Checkpoint(round_dir(self.workdir, self.round))

    # ---------------------------------------------------------------- publish
    def publish(self, out_dir: str | Path, *, progress: bool = True) -> list[Path]:
        """Write copy-1 … copy-m of the current round under `out_dir` (random order of k)."""
        out_dir = Path(out_dir)
        pin_mmap_threshold()
        with locked(self.workdir):
            handler = _add_log_file(self.workdir)
            try:
                theta = self.theta()
                layout = _layout(theta)
                base = Checkpoint(self.state.base_dir)
                for i in range(1, self.cfg.copies + 1):
                    if (out_dir / f"copy-{i}").exists():
                        raise ConfigError(
                            f"{out_dir / f'copy-{i}'}: already exists; publish into an empty folder"
                        )
                sigmas = compute_sigmas(theta, base, layout, self.cfg) if self.cfg.kappa > 0 else {}
                alphas = self._round_alphas()
                records = self.state.copy_records(self.round) or self._new_records()
                dtype_name = (
                    self.state.checkpoint_dtype
                    if self.cfg.publish_dtype == "checkpoint"
                    else self.cfg.publish_dtype
                )
                if dtype_name not in DTYPES:
                    raise ConfigError(f"cannot publish in dtype {dtype_name!r}")
                out_dir.mkdir(parents=True, exist_ok=True)
                stats = publish_copies(
                    theta,
                    layout,
                    streams=self._streams(),
                    round_=self.round,
                    alphas=alphas,
                    records=records,
                    sigmas=sigmas,
                    cfg=self.cfg,
                    out_dir=out_dir,
                    publish_dtype=DTYPES[dtype_name],
                    job_id=self.state.job_id,
                    key=self.state.key,
                    progress=progress,
                )
                self.state.copies[str(self.round)] = [asdict(r) for r in records]
                self.state.sigmas[str(self.round)] = sigmas
                self.state.history.append(
                    {"round": self.round, "event": "publish", "copies": stats}
                )
                save_state(self.workdir, self.state)
                log.info("round %d: published %d copies to %s", self.round, len(records), out_dir)
                return [out_dir / r.folder for r in sorted(records, key=lambda r: r.folder)]
            finally:
                log.removeHandler(handler)

    # ---------------------------------------------------------------- aggregate
    def aggregate(self, delta_paths: list[str | Path], *, progress: bool = True) -> dict:
        """Validate and fold the round's m updates into θ_{r+1}; advances the round."""
        pin_mmap_threshold()
        with locked(self.workdir):
            handler = _add_log_file(self.workdir)
            try:
                records = self.state.copy_records(self.round)
                if not records:
                    raise ConfigError(
                        f"{self.workdir}: round {self.round} has not been published yet"
                    )
                matched = match_deltas(
                    [Path(p) for p in delta_paths],
                    job_id=self.state.job_id,
                    round_=self.round,
                    records=records,
                    key=self.state.key,
                )
                theta = self.theta()
                out = round_dir(self.workdir, self.round + 1)
                if out.exists():  # left by a crash after the commit but before the state write
                    shutil.rmtree(out)
                stats = aggregate_updates(
                    theta,
                    _layout(theta),
                    matched,
                    streams=self._streams(),
                    round_=self.round,
                    alphas=self.state.alphas[str(self.round)],
                    cfg=self.cfg,
                    out=out,
                    progress=progress,
                )
                self.state.history.append({"round": self.round, "event": "aggregate", **stats})
                self.state.round += 1
                save_state(self.workdir, self.state)
                return stats
            finally:
                log.removeHandler(handler)

    # ---------------------------------------------------------------- export
    def export(self, out_dir: str | Path, *, dtype: str | None = None) -> Path:
        """The current θ_r as a Hugging Face folder, in the checkpoint's dtype unless told otherwise."""
        name = dtype or self.state.checkpoint_dtype
        if name not in DTYPES:
            raise ConfigError(f"export dtype must be one of {sorted(DTYPES)}, got {name!r}")
        theta = self.theta()
        writer = CheckpointWriter(
            out_dir,
            retype_layout(theta.layout(), {n: DTYPES[name] for n in theta.names()}),
            aux_from=theta,
            config_updates={"dtype": name},
        )
        try:
            for tensor_name in theta.names():
                writer.add(tensor_name, theta.read(tensor_name).to(DTYPES[name]))
        except BaseException:
            writer.abort()
            raise
        return writer.commit()

"""Distilling an emulator: the server repairs the thinned middle before publishing it.

An emulator copy (`server.emulator=layer_drop`) lacks some of θ's middle blocks, and with even
a few of them gone a pre-trained model stops working: on SmolLM2 four of 30 left out take its
answers on unseen questions from 0.47 to 0.01 (benchmarks/RESULTS.md). Offsite-Tuning's second
step repairs it: the kept middle blocks are trained towards θ by KL(θ ‖ emulator) on every
position of public text, while the outer blocks (the client's adapter) stay θ's, so the
client's updates still map back onto θ. The public text is sampled from the public base model —
nothing of θ's fine-tuning data — so distillation teaches the emulator θ's general behaviour
and, measurably, only part of what θ's fine-tune memorised.

The result is the kept middle blocks in θ's names (`emulator/model.safetensors` in the server's
workdir, its SHA-256 in the job's history); publication reads them in place of θ's
(`DistilledTheta`). `server.emulator=base_middle` uses the same file for the public base's own
middle blocks, copied untrained (`write_base_middle`). Round 1 distils once; the middle blocks
never change afterwards, because the server only ever applies updates to the outer blocks.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch

from mpu.errors import CheckpointError, ConfigError
from mpu.io.checkpoint import (
    Checkpoint,
    atomic_write_bytes,
    atomic_write_json,
    file_chunks,
    read_json,
    sha256_file,
)
from mpu.io.memory import reuse_freed_buffers
from mpu.io.safetensors_stream import SafetensorsReader, SafetensorsWriter
from mpu.server.emulator import Emulator

log = logging.getLogger("mpu.server")

FOLDER = "emulator"  # in the server's workdir
RECORD = "distill.json"  # beside the distilled blocks: what they were distilled from, how
BATCH = 8  # sequences per distillation step
LOG_EVERY = 50  # steps between progress lines
SAMPLE_BATCH = 16  # sequences generated at once


def distilled_path(workdir: Path) -> Path:
    """Where a job keeps its distilled middle blocks."""
    return Path(workdir) / FOLDER / "model.safetensors"


def public_text(base: Path, n: int, length: int, seed: int) -> torch.Tensor:
    """[n, length] token ids sampled from the public base model (temperature 1) from BOS:
    general text that carries nothing of θ's fine-tuning data."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    if start is None:
        raise ConfigError(f"{base}: the tokenizer has neither a BOS nor an EOS token to start from")
    torch.manual_seed(seed)
    out = []
    for i in range(0, n, SAMPLE_BATCH):
        prompt = torch.full((min(SAMPLE_BATCH, n - i), 1), start)
        with torch.no_grad():
            ids = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                 top_k=0, max_new_tokens=length - 1, min_new_tokens=length - 1,
                                 pad_token_id=start)  # fmt: skip
        out.append(ids[:, :length])
    return torch.cat(out)


def block_list(model, prefix: str) -> torch.nn.ModuleList:
    """The model's decoder blocks, found by the layout's block prefix (e.g. `model.layers`)."""
    blocks = model.get_submodule(prefix)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ConfigError(f"{prefix}: not the model's list of blocks; cannot thin it")
    return blocks


def without_blocks(model, prefix: str, left_out: list[int]):
    """`model` with the blocks `left_out` removed (in place), renumbered for attention caches."""
    gone = set(left_out)
    kept = [b for i, b in enumerate(block_list(model, prefix)) if i not in gone]
    parent, _, attr = prefix.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, torch.nn.ModuleList(kept))
    for i, block in enumerate(kept):
        for attn in ("self_attn", "attention"):
            if hasattr(getattr(block, attn, None), "layer_idx"):
                getattr(block, attn).layer_idx = i
    model.config.num_hidden_layers = len(kept)
    for key, value in vars(model.config).items():
        if (
            isinstance(value, list)
            and len(value) == len(kept) + len(gone)
            and key != "architectures"
        ):
            setattr(model.config, key, [v for i, v in enumerate(value) if i not in gone])
    return model


def distill(student, teacher, texts: torch.Tensor, params: list, *, steps: int, lr: float,
            seed: int, batch: int = BATCH) -> list[float]:  # fmt: skip
    """Train `params` of the student towards the teacher's next-token distribution on `texts`
    (KL(teacher ‖ student), every position); the loss of every step. Activation buffers are
    reused from step to step (`mpu.io.memory`: 10 % faster on SmolLM2 than mapping them
    afresh, benchmarks/distill_speed.py)."""
    for p in student.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    student.train()
    losses = []
    with reuse_freed_buffers():
        for _ in range(steps):
            ids = texts[torch.randint(len(texts), (batch,), generator=gen)]
            losses.append(kl_step(student, teacher, ids, opt))
            if len(losses) % LOG_EVERY == 0:  # a long silent step otherwise (minutes on CPU)
                log.info("distillation step %d/%d: KL %.3f", len(losses), steps, losses[-1])
    student.eval()
    for p in params:
        p.requires_grad_(False)
    return losses


def kl_step(student, teacher, ids: torch.Tensor, opt) -> float:
    """One optimizer step of the student on KL(teacher ‖ student) over every position of
    `ids`; the loss."""
    import torch.nn.functional as F

    with torch.no_grad():
        target = F.log_softmax(teacher(input_ids=ids).logits.float(), -1)
    logp = F.log_softmax(student(input_ids=ids).logits.float(), -1)
    loss = F.kl_div(logp, target, log_target=True, reduction="none").sum(-1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def distil_emulator(theta: Path, base: Path, emulator: Emulator, prefix: str, cfg, *,
                    seed: int, out: Path, theta_commitment: str) -> dict:  # fmt: skip
    """Distil the emulator's kept middle blocks towards θ and write them, in θ's names, to
    `out` (a model.safetensors, atomically); what it did, for the job's history."""
    from mpu.server.leakage.models import model_with

    if not emulator.drops:
        raise ConfigError(
            "emulator_distill_steps is set but the emulator keeps every block: nothing to repair"
        )
    started = time.perf_counter()
    log.info("distilling the emulator: %d middle blocks left out, %d steps on %d public "
             "sequences of %d tokens sampled from the base", len(emulator.left_out),
             cfg.emulator_distill_steps, cfg.emulator_distill_texts,
             cfg.emulator_distill_length)  # fmt: skip
    texts = public_text(base, cfg.emulator_distill_texts, cfg.emulator_distill_length, seed)
    teacher = model_with(theta)
    student = without_blocks(model_with(theta), prefix, emulator.left_out)
    blocks = block_list(student, prefix)
    params = [p for i in emulator.middle for p in blocks[i].parameters()]
    losses = distill(student, teacher, texts, params, steps=cfg.emulator_distill_steps,
                     lr=cfg.emulator_distill_lr, seed=seed)  # fmt: skip
    _write_blocks(out, Checkpoint(theta), {emulator.kept[i]: blocks[i] for i in emulator.middle},
                  prefix)  # fmt: skip
    seconds = time.perf_counter() - started
    log.info("emulator distilled in %.0f s: KL(θ ‖ emulator) %.3f → %.3f", seconds, losses[0],
             losses[-1])  # fmt: skip
    record = {"event": "distill", "sha256": sha256_file(out), "kl_first": losses[0],
              "kl_last": losses[-1], "steps": len(losses), "seconds": round(seconds, 1),
              "theta": theta_commitment, "left_out": emulator.left_out}  # fmt: skip
    atomic_write_json(out.parent / RECORD, record)
    return record


def reuse_emulator(source: Path, out: Path, emulator: Emulator, theta_commitment: str) -> dict:
    """Copy the distilled middle of an earlier job on the same θ and emulator (`source`: its
    workdir) instead of distilling again; what was reused, for the job's history."""
    found = distilled_path(source)
    record_path = found.parent / RECORD
    if not found.is_file() or not record_path.is_file():
        raise ConfigError(f"emulator_distilled_from={source}: no distilled emulator there "
                          f"({found} and {record_path} expected)")  # fmt: skip
    record = read_json(record_path, "distilled emulator record")
    if record.get("theta") != theta_commitment:
        raise ConfigError(f"{record_path}: distilled from another model than this job's θ")
    if record.get("left_out") != emulator.left_out:
        raise ConfigError(f"{record_path}: its emulator leaves out blocks "
                          f"{record.get('left_out')}, this job's {emulator.left_out}")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, _checked_chunks(found, record.get("sha256")))  # read once, streamed
    atomic_write_json(out.parent / RECORD, record)
    log.info("emulator: the distilled middle of %s reused (%d steps, KL %.3f)", source,
             record["steps"], record["kl_last"])  # fmt: skip
    return {**record, "reused_from": str(source)}


def write_base_middle(base: Path, theta: Checkpoint, emulator: Emulator, layout, *, out: Path,
                      theta_commitment: str) -> dict:  # fmt: skip
    """Write the public base's tensors of the emulator's middle blocks, in θ's names and dtypes,
    to `out` (atomically): what `server.emulator=base_middle` publishes in place of θ's middle.
    Its record, for the job's history (read like a distillation of 0 steps)."""
    started = time.perf_counter()
    middle = {emulator.kept[i] for i in emulator.middle}
    names = [n for n in theta.names() if layout.block_of(n) in middle]
    _write_as_theta(out, theta, names, Checkpoint(base).read)
    record = {"event": "distill", "source": "base", "sha256": sha256_file(out), "steps": 0,
              "seconds": round(time.perf_counter() - started, 1), "theta": theta_commitment,
              "left_out": emulator.left_out, "middle_blocks": sorted(middle)}  # fmt: skip
    atomic_write_json(out.parent / RECORD, record)
    log.info("emulator: θ's %d middle blocks are published as the public base's", len(middle))
    return record


def _write_blocks(out: Path, theta: Checkpoint, blocks: dict[int, torch.nn.Module], prefix: str):
    """Write the blocks' tensors under θ's names (θ's block index → module), in θ's dtypes;
    buffers θ's checkpoint does not store are left out."""
    tensors = {}
    for layer, block in blocks.items():
        for local, t in block.state_dict().items():
            name = f"{prefix}.{layer}.{local}"
            if name in theta.file_of:
                tensors[name] = t.detach()
    _write_as_theta(out, theta, list(tensors), tensors.__getitem__)


def _write_as_theta(out: Path, theta: Checkpoint, names: list[str], read) -> None:
    """Write `read(name)` for each of θ's tensors `names` to `out` with θ's specs (its dtypes
    and shapes), one tensor in memory at a time; the writer commits atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = SafetensorsWriter(out, [theta.spec(n) for n in names])
    for name in names:
        writer.add(name, read(name).to(theta.spec(name).dtype).contiguous())
    writer.commit()


class DistilledTheta(Checkpoint):
    """θ_r as the copies are made from it: every tensor θ_r's, except the emulator's middle
    blocks, which are read from the distilled file (same names, shapes and dtypes)."""

    def __init__(self, theta_dir: Path, distilled: Path, sha256: str):
        super().__init__(theta_dir)
        if not distilled.is_file():
            raise CheckpointError(f"{distilled}: the distilled emulator is missing")
        if sha256_file(distilled) != sha256:
            raise CheckpointError(
                f"{distilled}: the distilled emulator's SHA-256 is not the one recorded when it "
                "was written (changed or corrupted)"
            )
        self._distilled = SafetensorsReader(distilled)
        for name, spec in self._distilled.specs.items():
            if name not in self.file_of or self.spec(name) != spec:
                raise CheckpointError(
                    f"{distilled}: tensor {name!r} is not one of {theta_dir}'s, or of another "
                    "shape or dtype"
                )

    @property
    def distilled_names(self) -> frozenset[str]:
        """The tensors read from the distilled file rather than θ_r."""
        return frozenset(self._distilled.specs)

    def read(self, name: str) -> torch.Tensor:
        if name in self._distilled.specs:
            return self._distilled.read(name)
        return super().read(name)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        if name in self._distilled.specs:
            return self._distilled.read_flat(name, start, stop)
        return super().read_flat(name, start, stop)


def _checked_chunks(path: Path, sha256: str | None):
    """The file's bytes in pieces, hashed as they pass; a file that is not the one its record
    describes raises after the last piece, so the atomic write that consumes them is undone."""
    h = hashlib.sha256()
    for chunk in file_chunks(path):
        h.update(chunk)
        yield chunk
    if h.hexdigest() != sha256:
        raise CheckpointError(f"{path}: not the file its record describes (changed or corrupted)")

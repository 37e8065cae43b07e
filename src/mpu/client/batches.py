"""Client data: row validation, encoding, and the seeded order shared by all copies.

One order per `order_seed` fixes, for every epoch, the forget permutation, the retain item
paired with each forget item and the IDK refusal drawn for it (docs/methods.md, "Data order"), so the
m copies of a round see identical batches (docs/protocol.md §6, B21). Each stream has its own
generator seeded by (order_seed, stream, epoch): an epoch's order does not depend on which
other streams a method reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mpu.errors import DataError
from mpu.text import Encoded, PromptFormat, collate, encode_completion, encode_qa, pad_id_of

_STREAMS = {"forget": 0, "retain": 1, "idk": 2, "poisson": 3}


def _row_kind(row: Any, where: str) -> str:
    if not isinstance(row, dict):
        raise DataError(
            f"{where}: expected a dict with question/answer or text, got {type(row).__name__}"
        )
    if "question" in row or "answer" in row:
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{where}: field {key!r} missing or not a string")
        return "qa"
    if isinstance(row.get("text"), str):
        return "text"
    raise DataError(
        f"{where}: needs 'question' and 'answer' (QA) or 'text' (corpus), has {sorted(row)}"
    )


def check_rows(rows: Sequence[dict] | None, name: str) -> list[str]:
    """Kinds ('qa' / 'text') of each row; DataError when empty or a field is missing."""
    if rows is None or len(rows) == 0:
        raise DataError(f"{name} set is empty: nothing to train on")
    return [_row_kind(r, f"{name} row {i}") for i, r in enumerate(rows)]


def encode_row(tokenizer, row: dict, *, fmt: PromptFormat, max_length: int) -> Encoded:
    """QA rows via `encode_qa`, text rows via `encode_completion` (labels on all but BOS)."""
    if "text" in row and "question" not in row:
        return encode_completion(tokenizer, "", row["text"], max_length=max_length)
    return encode_qa(tokenizer, row["question"], row["answer"], fmt=fmt, max_length=max_length)


def encode_rows(
    tokenizer, rows: Sequence[dict], *, fmt: PromptFormat, max_length: int
) -> tuple[list[Encoded], list[dict], int]:
    """Encode rows (QA via `encode_qa`, text via `encode_completion`); drop answerless items.

    Returns the kept items, their rows and how many were dropped because no answer token survived
    (docs/methods.md: such items make SimNPO divide by zero and CE undefined).
    """
    out = [encode_row(tokenizer, r, fmt=fmt, max_length=max_length) for r in rows]
    keep = [i for i, e in enumerate(out) if e.n_answer_tokens > 0]
    return [out[i] for i in keep], [rows[i] for i in keep], len(out) - len(keep)


def _generator(seed: int, stream: str, epoch: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, _STREAMS[stream], epoch]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


@dataclass(frozen=True)
class MicroBatch:
    """Indices of one micro-batch: forget items, their paired retain items and IDK lines."""

    forget: tuple[int, ...]
    retain: tuple[int, ...]
    idk: tuple[int, ...]


def epoch_batches(
    n_forget: int, n_retain: int, n_idk: int, batch_size: int, *, seed: int, epoch: int
) -> list[MicroBatch]:
    """The micro-batches of one epoch (last one may be short), deterministic in (seed, epoch)."""
    perm = torch.randperm(n_forget, generator=_generator(seed, "forget", epoch)).tolist()
    pair = (
        torch.randint(n_retain, (n_forget,), generator=_generator(seed, "retain", epoch)).tolist()
        if n_retain
        else []
    )
    idk = (
        torch.randint(n_idk, (n_forget,), generator=_generator(seed, "idk", epoch)).tolist()
        if n_idk
        else []
    )
    out = []
    for i in range(0, n_forget, batch_size):
        f = tuple(perm[i : i + batch_size])
        out.append(
            MicroBatch(
                f,
                tuple(pair[j] for j in f) if pair else (),
                tuple(idk[j] for j in f) if idk else (),
            )
        )
    return out


def poisson_batch(
    n_forget: int, n_retain: int, n_idk: int, rate: float, *, seed: int, step: int
) -> MicroBatch:
    """DP-SGD's batch for `step` (dp.unit=example): every forget item with probability `rate`,
    each with a retain item and an IDK line drawn for it; deterministic in (seed, step), so
    the copies of a round sample alike."""
    from mpu.privacy.dp_sgd import poisson_indices

    gen = _generator(seed, "poisson", step)
    f = poisson_indices(n_forget, rate, gen)
    pair = torch.randint(n_retain, (len(f),), generator=gen).tolist() if n_retain else []
    idk = torch.randint(n_idk, (len(f),), generator=gen).tolist() if n_idk else []
    return MicroBatch(tuple(f), tuple(pair), tuple(idk))


def single_items(mb: MicroBatch) -> list[MicroBatch]:
    """A micro-batch split into micro-batches of one forget item each (with its pairs)."""
    return [
        MicroBatch((f,), mb.retain[k : k + 1], mb.idk[k : k + 1]) for k, f in enumerate(mb.forget)
    ]


class BatchBuilder:
    """Turns a `MicroBatch` into the tensors a loss reads (`forget`, `retain`, `alternate`).

    Retain rows are encoded on first use (a retain split is often 10× the forget split and
    only the paired items are read); answerless retain items add nothing to the token-mean
    NLL and are counted in `retain_answerless`.
    """

    def __init__(
        self,
        tokenizer,
        forget: list[Encoded],
        forget_rows: list[dict],
        retain_rows: Sequence[dict],
        idk_answers: list[str],
        *,
        fmt: PromptFormat,
        max_length: int,
        alternates: list[list[str]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.alternates = alternates  # per forget item (AltPO); else the shared IDK list
        self.pad = pad_id_of(tokenizer)
        self.forget, self.forget_rows, self.retain_rows = forget, forget_rows, retain_rows
        self._retain: dict[int, Encoded] = {}
        self.retain_answerless = 0
        self.idk, self.fmt, self.max_length = idk_answers, fmt, max_length
        self._alt: dict[tuple[int, int], Encoded] = {}
        self._digest = hashlib.sha256()

    def _collate(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        return collate(
            [e.input_ids for e in items], pad_id=self.pad, labels=[e.labels for e in items]
        )

    def _retain_item(self, j: int) -> Encoded:
        if j not in self._retain:
            enc = encode_row(
                self.tokenizer, self.retain_rows[j], fmt=self.fmt, max_length=self.max_length
            )
            self.retain_answerless += enc.n_answer_tokens == 0
            self._retain[j] = enc
        return self._retain[j]

    def _alternate(self, i: int, j: int) -> Encoded:
        if (i, j) not in self._alt:
            q = self.forget_rows[i]["question"]
            own = self.alternates[i] if self.alternates else None
            answer = own[j % len(own)] if own else self.idk[j]
            self._alt[(i, j)] = encode_qa(
                self.tokenizer, q, answer.strip(), fmt=self.fmt, max_length=self.max_length
            )
        return self._alt[(i, j)]

    def build(self, mb: MicroBatch) -> dict[str, dict[str, torch.Tensor]]:
        self._digest.update(repr((mb.forget, mb.retain, mb.idk)).encode())
        batch = {"forget": self._collate([self.forget[i] for i in mb.forget])}
        if mb.retain:
            batch["retain"] = self._collate([self._retain_item(j) for j in mb.retain])
        if mb.idk:
            batch["alternate"] = self._collate(
                [self._alternate(i, j) for i, j in zip(mb.forget, mb.idk, strict=True)]
            )
        return batch

    @property
    def order_digest(self) -> str:
        """SHA-256 of every micro-batch's indices so far: equal digests ⇔ identical data order."""
        return self._digest.hexdigest()


def iterate(
    n_forget: int, n_retain: int, n_idk: int, batch_size: int, *, seed: int
) -> Iterator[tuple[int, int, MicroBatch, int]]:
    """Endless (epoch, index in epoch, micro-batch, micro-batches in epoch) stream."""
    epoch = 0
    while True:
        mbs = epoch_batches(n_forget, n_retain, n_idk, batch_size, seed=seed, epoch=epoch)
        for k, mb in enumerate(mbs):
            yield epoch, k, mb, len(mbs)
        epoch += 1

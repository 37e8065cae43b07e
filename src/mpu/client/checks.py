"""Everything a client run checks before its first forward pass: the rows each method reads,
the models it needs, the trainable scope (docs/methods.md). A bad input is a ConfigError or
DataError here, never a failure half-way through training."""

from __future__ import annotations

from collections.abc import Sequence

from mpu.client.batches import check_rows
from mpu.client.optim import select_trainable
from mpu.errors import ConfigError, DataError


def validate_inputs(
    model,
    tokenizer,
    forget_rows,
    retain_rows,
    idk_answers,
    eff,
    reference_model,
    teacher_model=None,
):
    spec, hp = eff.method, eff.hp
    kinds = check_rows(forget_rows, "forget")
    use_retain = spec.uses_retain(hp)
    if use_retain:
        check_rows(retain_rows, "retain")
    if spec.needs_idk:
        if not idk_answers or not all(isinstance(a, str) and a.strip() for a in idk_answers):
            raise DataError(f"{spec.name} needs IDK answers (a non-empty list of refusal strings)")
        if "text" in kinds:
            raise DataError(f"{spec.name} needs QA forget rows (question/answer), not text")
    if spec.needs_alternates:
        check_alternates(spec.name, forget_rows)
    if spec.needs_teacher and teacher_model is None:
        raise ConfigError(f"{spec.name} needs a teacher that never saw the forget set: set "
                          "teacher=DIR (the public base, or a model the server provides)")  # fmt: skip
    if spec.uses_reference(hp) and reference_model is None and eff.reference == "clean":
        raise ConfigError("reference=clean: pass the clean model as reference_model")
    if spec.check_model is not None:
        spec.check_model(model, hp)
    if eff.trainable != "lora":  # adapters are attached (and their targets checked) later
        select_trainable(model, eff.trainable)
    if tokenizer is None:
        raise ConfigError("train_unlearning needs the copy's tokenizer")
    return spec, hp, use_retain


def check_alternates(name: str, rows: Sequence[dict]) -> None:
    """Every forget row carries a non-empty list of non-empty alternate answers."""
    for i, row in enumerate(rows):
        alt = row.get("alternate")
        if not (isinstance(alt, list) and alt and all(isinstance(a, str) and a.strip()
                                                      for a in alt)):  # fmt: skip
            raise DataError(f"{name}: forget row {i} has no 'alternate' answers (a non-empty "
                            "list of strings; synthetic TOFU: the forgetNN_alternate split)")  # fmt: skip

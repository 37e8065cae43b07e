"""`ClientTrainConfig`: every knob of the client's local unlearning run, and its resolution.

Fields left at None take the value of the chosen profile (`mpu.methods.profiles`:
`openunlearning` = stock OpenUnlearning, `paper` = the MPU reference client) on the chosen
benchmark. `resolve()` turns the config into `ClientSettings`, a frozen object with every
value filled in and the method's hyperparameter config built; it is resolved once, passed
down to the trainer and the scheduler, and logged with every copy's result (no hidden
defaults, no second resolution in a lower layer).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from mpu.client.adapters import LoRAConfig
from mpu.client.adversary import AdversaryConfig
from mpu.client.salient import SalientConfig
from mpu.config import field
from mpu.devices import DEVICE_HELP, check_device_name
from mpu.errors import ConfigError
from mpu.methods import Method, build_method_config, get_method, training_defaults
from mpu.methods.profiles import BENCHMARKS, PROFILES
from mpu.privacy.dp import DPConfig
from mpu.text import PromptConfig

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "linear")
ACCUMULATIONS = ("hf", "epoch_flush")
PRECISIONS = ("fp32", "bf16-mixed", "bf16_weights", "pure_bf16")
REFERENCES = ("copy", "clean")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value is not None and value not in allowed:
        raise ConfigError(f"ClientTrainConfig.{name}={value!r}: choose one of {', '.join(allowed)}")


@dataclass
class MethodHParams:
    """Overrides of method hyperparameters; None = the profile's value.

    The union of every method's keys, so `hparams.beta=0.2` is typed and `hparams.betta`
    fails in the config loader; a key the chosen method lacks fails in `build_method_config`.
    """

    beta: float | None = field(None, help="β of NPO, SimNPO, DPO, UNDIAL, WGA")
    gamma: float | None = field(None, help="forget weight γ")
    alpha: float | None = field(None, help="retain weight α")
    delta: float | None = field(None, help="SimNPO margin δ")
    retain_loss_type: str | None = field(None, help="NLL | KL (RMU: EMBED_DIFF)")
    undial_mask: str | None = field(None, help="UNDIAL: all | answer")
    beta1: float | None = field(None, help="SatImp exponent on p")
    beta2: float | None = field(None, help="SatImp exponent on 1−p")
    steering_coeff: float | None = field(None, help="RMU steering norm s")
    layer: int | None = field(None, help="RMU steered decoder block (default: 7 or the middle)")
    steering_seed: int | None = field(None, help="RMU steering direction seed")
    ignore_first_n_answer_tokens: int | None = field(None, help="CE-U skipped answer tokens")
    retain_loss_eps: float | None = field(None, help="PDU ε: the retain NLL to stay below")
    primal_dual: bool | None = field(None, help="PDU: move the dual variable")
    dual_step_size: float | None = field(None, help="PDU η_d")
    dual_update_upon: str | None = field(None, help="PDU: step")
    dual_warmup_epochs: int | None = field(None, help="PDU: epochs before λ moves")
    divergence: str | None = field(None, help="Distill: forward | reverse KL")

    def set_values(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class ClientTrainConfig:
    """Client unlearning run: method, profile, optimizer, schedule, batching, precision, scope."""

    method: str | None = field(
        "GradDiff",
        help="unlearning method (mpu.methods.METHODS; case-insensitive); mpu run sets it from "
        "methods=[…]",
    )
    profile: str = field("openunlearning", help="defaults profile: openunlearning | paper")
    benchmark: str = field("tofu", help="which stock column of the profile: tofu | muse | wmdp")
    hparams: MethodHParams | dict[str, Any] = dataclasses.field(
        default_factory=MethodHParams,
        metadata={"help": "method hyperparameter overrides, e.g. hparams.beta=0.2"},
    )
    retain_loss: str | None = field(None, help="retain loss NLL | KL (shortcut for hparams)")
    optimizer: str | None = field(None, help="adamw (default) | sgd")
    lr: float | None = field(None, help="peak learning rate (both profiles: 1e-5 on TOFU)")
    weight_decay: float | None = field(None, help="decoupled (AdamW) / L2 (SGD) weight decay")
    decay_norms_and_biases: bool | None = field(
        None, help="decay biases and norm gains too (paper: yes, torch default; HF Trainer: no)"
    )
    betas: list[float] | None = field(None, help="AdamW betas (0.9, 0.999)")
    eps: float | None = field(None, help="AdamW epsilon (1e-8)")
    momentum: float = field(0.0, help="SGD momentum (0 = plain SGD)")
    schedule: str | None = field(None, help="constant | linear (decay to 0), both after warm-up")
    warmup_epochs: float | None = field(
        None, help="warm-up length in epochs: ⌊w·N_f/(b·g)⌋ steps (OpenUnlearning: 1.0)"
    )
    warmup_steps: int | None = field(None, help="warm-up steps; overrides warmup_epochs")
    schedule_offset_steps: int = field(
        0, help="global step this call starts at (round r of a schedule spanning R·E epochs)"
    )
    total_steps: int = field(0, help="steps of the whole schedule (0 = this call's steps)")
    epochs: int | None = field(None, help="epochs over the forget set (per round in MPU)")
    max_steps: int | None = field(None, help="optimizer steps; > 0 overrides epochs (WMDP: 80)")
    batch_size: int | None = field(None, help="micro-batch size b (8)")
    grad_accum: int | None = field(None, help="gradient accumulation g (4)")
    accumulation: str | None = field(
        None,
        help="hf: counter runs across epochs, no flush (HF Trainer 4.45); "
        "epoch_flush: leftover micro-batches stepped at each epoch end (MPU client)",
    )
    max_grad_norm: float | None = field(None, help="global-norm clipping (1.0); 0 = off")
    precision: str | None = field(
        None,
        help="fp32 | bf16-mixed (fp32 master weights and state, bf16 autocast) | bf16_weights "
        "(bf16 weights, fp32 optimizer state: stock OpenUnlearning) | pure_bf16 (bf16 weights "
        "and AdamW state: the MPU client)",
    )
    trainable: str = field(
        "all",
        help="trainable scope: all | decoder (decoder blocks) | lora (adapters, merged before "
        "the delta) | salient (the top salient.fraction of all parameters by importance on the "
        "forget set; exactly zero update elsewhere) | a regex on parameter names",
    )
    sharding: str = field(
        "none",
        help="none | fsdp: full-parameter training sharded over the --num-processes processes "
        "(each holds 1/N of the parameters, gradients and optimizer state; docs/methods.md)",
    )
    report_to: str = field(
        "none",
        help="where the per-step curves go besides curves.jsonl: none | tensorboard (event "
        "files in OUT/tensorboard; needs the tensorboard extra)",
    )
    lora: LoRAConfig = dataclasses.field(
        default_factory=LoRAConfig,
        metadata={
            "help": "trainable=lora: lora.rank, lora.alpha, lora.dropout, lora.target_modules"
        },
    )
    salient: SalientConfig = dataclasses.field(
        default_factory=SalientConfig,
        metadata={
            "help": "trainable=salient: salient.fraction, salient.score, salient.lr_scale, "
            "salient.probes"
        },
    )
    mia_adversary: AdversaryConfig = dataclasses.field(
        default_factory=AdversaryConfig,
        metadata={
            "help": "adversarial membership training: mia_adversary.weight (λ > 0 turns it on), "
            "mia_adversary.holdout_split, mia_adversary.lr"
        },
    )
    gradient_checkpointing: bool = field(
        False, help="recompute block activations in the backward pass (memory for time)"
    )
    device: str = field("auto", help=DEVICE_HELP)
    reference_device: str = field(
        "same", help="where the reference/teacher model lives: same (the model's device) | cpu"
    )
    reference_precision: str = field(
        "same", help="reference model weights: same (the training dtype) | bf16 (half the memory)"
    )
    teacher: str | None = field(
        None, help="Distill: a model folder that never saw the forget set, whose outputs the "
        "student follows on it (the public base; `mpu run` passes its base)"
    )  # fmt: skip
    reference: str = field(
        "copy",
        help="reference model: copy (the client's own starting copy) | clean (caller passes "
        "the clean model: reproduces the paper, breaks the threat model)",
    )
    seed: int = field(0, help="torch seed (dropout, RMU-independent RNG)")
    max_length: int = field(512, help="token limit per item (TOFU 512, MUSE 2048)")
    prompt: PromptConfig = dataclasses.field(
        default_factory=PromptConfig,
        metadata={
            "help": "prompt format: prompt.template, prompt.system_prompt, prompt.date_string"
        },
    )
    dp: DPConfig = dataclasses.field(
        default_factory=DPConfig,
        metadata={"help": "differentially private updates: dp.clip, dp.epsilon, dp.delta"},
    )

    def __post_init__(self) -> None:
        _choice("profile", self.profile, PROFILES)
        _choice("benchmark", self.benchmark, BENCHMARKS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("accumulation", self.accumulation, ACCUMULATIONS)
        _choice("precision", self.precision, PRECISIONS)
        _choice("reference", self.reference, REFERENCES)
        _choice("retain_loss", self.retain_loss, ("NLL", "KL"))
        _choice("reference_device", self.reference_device, ("same", "cpu"))
        _choice("reference_precision", self.reference_precision, ("same", "bf16"))
        check_device_name(self.device, "ClientTrainConfig.device")
        if isinstance(self.lora, dict):
            self.lora = LoRAConfig(**self.lora)
        if isinstance(self.salient, dict):
            self.salient = SalientConfig(**self.salient)
        if isinstance(self.mia_adversary, dict):
            self.mia_adversary = AdversaryConfig(**self.mia_adversary)
        for name in ("epochs", "batch_size", "grad_accum", "max_length"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"ClientTrainConfig.{name}={v}: must be >= 1")
        for name in (
            "lr",
            "weight_decay",
            "eps",
            "max_grad_norm",
            "warmup_epochs",
            "max_steps",
            "warmup_steps",
            "momentum",
        ):
            v = getattr(self, name)
            if v is not None and not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"ClientTrainConfig.{name}={v}: must be a finite number >= 0")
        if self.schedule_offset_steps < 0 or self.total_steps < 0:
            raise ConfigError("ClientTrainConfig.schedule_offset_steps/total_steps: must be >= 0")
        if self.betas is not None and (
            len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas)
        ):
            raise ConfigError(f"ClientTrainConfig.betas={self.betas}: two values in [0, 1)")
        if self.trainable not in ("all", "decoder", "lora", "salient"):
            try:
                re.compile(self.trainable)
            except re.error as exc:
                raise ConfigError(
                    f"ClientTrainConfig.trainable={self.trainable!r}: {exc}"
                ) from None
        from mpu.client.curves import check_report_to
        from mpu.client.sharding import check_sharding

        check_report_to(self.report_to)
        check_sharding(self.sharding, self.trainable)
        if isinstance(self.prompt, dict):
            self.prompt = PromptConfig(**self.prompt)
        if isinstance(self.dp, dict):
            self.dp = DPConfig(**self.dp)
        if self.method is not None:
            self.method = get_method(self.method).name
            self.method_config()  # unknown / invalid hyperparameters fail here, before any use

    def _hparams(self) -> dict[str, Any]:
        hp = (
            self.hparams.set_values()
            if isinstance(self.hparams, MethodHParams)
            else dict(self.hparams)
        )
        if self.retain_loss is not None:
            if hp.get("retain_loss_type", self.retain_loss) != self.retain_loss:
                raise ConfigError(
                    "ClientTrainConfig: retain_loss and hparams.retain_loss_type differ"
                )
            hp["retain_loss_type"] = self.retain_loss
        return hp

    def method_config(self) -> Any:
        """The method's hyperparameter dataclass (profile values, then `hparams`)."""
        return build_method_config(self.method, self.profile, self._hparams())

    def resolve(self, n_params: int | None = None) -> ClientSettings:
        """Every value filled in from the profile, the method config built (errors raise now).

        With the model's parameter count, unset `lr` and `precision` follow the small-model
        rule (`small_model_defaults`) instead of the profile's values tuned for 1B+ models.
        """
        if self.method is None:
            raise ConfigError("ClientTrainConfig.method is not set: name an unlearning method")
        defaults = training_defaults(self.profile, self.benchmark)
        rule = ""
        if n_params is not None:
            small, note = small_model_defaults(n_params, defaults)
            taken = {k: v for k, v in small.items() if getattr(self, k) is None}
            defaults.update(taken)
            if taken:
                rule = ", ".join(f"{k}={v}" for k, v in taken.items()) + f" ({note})"
        if self.trainable == "lora" and self.lr is None:
            defaults["lr"] *= LORA_LR_FACTOR
            note = f"lr={defaults['lr']:g} (trainable=lora: {LORA_LR_FACTOR}× full fine-tuning's)"
            rule = f"{rule}; {note}" if rule else note
        values = {
            f.name: (
                defaults.get(f.name) if getattr(self, f.name) is None else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
            if f.name not in ("method", "hparams", "retain_loss")
        }
        values["betas"] = tuple(values["betas"])
        return ClientSettings(
            method=get_method(self.method), hp=self.method_config(), defaults_rule=rule, **values
        )


# Measured on the embedded tiny Llama (0.92 M parameters, synthetic TOFU forget05, NPO,
# the demo's budget): lr 1e-5 in bf16 changes nothing, lr 1e-4 fp32 moves the forget answer
# probability 0.94 → 0.91, lr 5e-4 fp32 → 0.63 (benchmarks/RESULTS.md). Below 1B parameters
# bf16 weights round away most updates of a 1e-5 step (90–98 % of the forget-probability drop
# lost), so fp32 is the default there.
SMALL_MODEL_LR = ((10_000_000, 5e-4), (1_000_000_000, 5e-5))
SMALL_MODEL_LIMIT = 1_000_000_000
# Adapters start at B = 0 and hold ~1 % of the parameters: LoRA recipes use about ten times the
# full fine-tuning learning rate (1e-4 where full fine-tuning uses 1e-5).
LORA_LR_FACTOR = 10


def small_model_defaults(n_params: int, profile: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The lr and precision a model of `n_params` parameters needs; ({}, "") for 1B and more."""
    if n_params >= SMALL_MODEL_LIMIT:
        return {}, ""
    lr = next(lr for limit, lr in SMALL_MODEL_LR if n_params < limit)
    out: dict[str, Any] = {"lr": max(lr, profile["lr"])}
    if profile["precision"] in ("bf16_weights", "pure_bf16"):
        out["precision"] = "fp32"
    return out, f"small-model rule: {n_params / 1e6:.2f} M parameters, docs/methods.md"


@dataclass(frozen=True)
class ClientSettings:
    """A resolved `ClientTrainConfig`: what the trainer runs, logged with every result."""

    method: Method
    hp: Any
    profile: str
    benchmark: str
    optimizer: str
    lr: float
    weight_decay: float
    decay_norms_and_biases: bool
    betas: tuple[float, float]
    eps: float
    momentum: float
    schedule: str
    warmup_epochs: float
    warmup_steps: int | None
    schedule_offset_steps: int
    total_steps: int
    epochs: int
    max_steps: int
    batch_size: int
    grad_accum: int
    accumulation: str
    max_grad_norm: float
    precision: str
    trainable: str
    reference: str
    seed: int
    max_length: int
    prompt: PromptConfig
    dp: DPConfig = dataclasses.field(default_factory=DPConfig)
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    salient: SalientConfig = dataclasses.field(default_factory=SalientConfig)
    mia_adversary: AdversaryConfig = dataclasses.field(default_factory=AdversaryConfig)
    gradient_checkpointing: bool = False
    device: str = "auto"
    reference_device: str = "same"
    reference_precision: str = "same"
    teacher: str | None = None
    defaults_rule: str = ""  # which unset values the small-model rule filled in
    report_to: str = "none"
    sharding: str = "none"

    def replace(self, **changes: Any) -> ClientSettings:
        return dataclasses.replace(self, **changes)

    def to_log(self) -> dict[str, Any]:
        """Every resolved setting plus the full method hyperparameters (JSON-ready)."""
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("method", "hp", "prompt", "dp", "lora", "salient", "mia_adversary")
        }
        out.update(
            method=self.method.name,
            betas=list(self.betas),
            hparams=dataclasses.asdict(self.hp),
            prompt=dataclasses.asdict(self.prompt),
            dp=dataclasses.asdict(self.dp),
            lora=dataclasses.asdict(self.lora) if self.trainable == "lora" else None,
            salient=dataclasses.asdict(self.salient) if self.trainable == "salient" else None,
            mia_adversary=(dataclasses.asdict(self.mia_adversary)
                           if self.mia_adversary.enabled else None),
        )  # fmt: skip
        return out

"""PDU: primal–dual unlearning (OpenUnlearning community method; docs/methods.md).

Forget loss: flatten the logit margin, L_f = Σ_{(b,t)∈U} (max_v z_{b,t,v} − mean_v z_{b,t,v})² / |U|
with U the positions whose *unshifted* label is an answer token (upstream's indexing, one
position off from the next-token positions the other methods score). Retain constraint:
L_r − ε ≤ 0 with the NLL retain loss, enforced by a dual variable λ (λ_0 = α):
L = γ·L_f + λ·(L_r − ε). After the dual warm-up (enabled at the end of the first epoch whose
count of completed epochs reaches `dual_warmup_epochs`), every loss evaluation — every
micro-batch — moves λ ← max(0, λ + η_d·(L_r − ε)) with that batch's L_r, after the loss has
used the old λ. λ lives for one client call (one copy, one round).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mpu.config import field
from mpu.errors import ConfigError
from mpu.methods.base import Batch, Method, Result, positive
from mpu.methods.common import forward_logits, retain_loss
from mpu.methods.grad_diff import GradDiffConfig


@dataclass
class PDUConfig(GradDiffConfig):
    """Primal–dual unlearning (OpenUnlearning `PDU.yaml`); α is the dual variable's start λ_0."""

    retain_loss_eps: float | None = field(
        None, help="ε: the retain loss the dual variable holds L_r below (required, as upstream; "
        "its TOFU runs use 0.3)"
    )  # fmt: skip
    primal_dual: bool = field(True, help="update the dual variable (false: fixed weight α)")
    dual_step_size: float = field(1.0, help="η_d, the dual step size (TOFU runs: 5)")
    dual_update_upon: str = field("step", help="step: every micro-batch (upstream's default)")
    dual_warmup_epochs: int = field(5, help="epochs before the dual variable starts to move")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retain_loss_type != "NLL":
            raise ConfigError("PDUConfig.retain_loss_type: PDU's constraint is on the NLL")
        if self.retain_loss_eps is None:
            raise ConfigError("PDU needs hparams.retain_loss_eps (ε, the retain NLL to stay "
                              "below; OpenUnlearning's TOFU runs use 0.3)")  # fmt: skip
        positive(self, "retain_loss_eps", self.retain_loss_eps, allow_zero=True)
        positive(self, "dual_step_size", self.dual_step_size, allow_zero=True)
        if self.dual_update_upon != "step":
            raise ConfigError(f"PDUConfig.dual_update_upon={self.dual_update_upon!r}: only "
                              "'step' (every micro-batch) is supported")  # fmt: skip
        if not isinstance(self.dual_warmup_epochs, int) or self.dual_warmup_epochs < 0:
            raise ConfigError("PDUConfig.dual_warmup_epochs: an integer >= 0")


class DualState:
    """λ and whether it may move yet; one per client call."""

    def __init__(self, hp: PDUConfig) -> None:
        self.lam = float(hp.alpha)
        self.hp = hp
        self.updating = hp.dual_warmup_epochs == 0

    def end_epoch(self, completed: int) -> None:
        """Called after each epoch with the number of epochs completed."""
        if completed >= self.hp.dual_warmup_epochs:
            self.updating = True

    def observe(self, slack: float) -> None:
        if self.hp.primal_dual and self.updating:
            self.lam = max(0.0, self.lam + self.hp.dual_step_size * slack)


def margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared (max − mean) logit over the positions whose unshifted label is scored."""
    margin = logits.max(dim=-1).values - logits.mean(dim=-1)
    mask = (labels.to(logits.device) != -100).to(logits.dtype)
    return (margin.square() * mask).sum() / mask.sum().clamp_min(1)


def pdu_loss(model, batch: Batch, ref, hp: PDUConfig, *, state: DualState) -> Result:
    f = batch["forget"]
    lf = margin_loss(forward_logits(model, f), f["labels"])
    slack = retain_loss(model, batch["retain"], None, "NLL") - hp.retain_loss_eps
    loss = hp.gamma * lf + state.lam * slack
    logs = {"forget_loss": float(lf.detach()), "retain_loss": float(slack.detach()) +
            hp.retain_loss_eps, "dual": state.lam, "loss": float(loss.detach())}  # fmt: skip
    state.observe(float(slack.detach()))
    return loss, logs


METHOD = Method(
    "PDU",
    pdu_loss,
    PDUConfig,
    needs_retain=True,
    new_state=DualState,
)

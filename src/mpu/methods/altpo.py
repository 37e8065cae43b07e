"""AltPO: DPO towards offline alternate answers (Mekala et al. 2024, "Alternate Preference
Optimization for Unlearning Factual Knowledge"; OpenUnlearning runs it as its DPO trainer on
`QAwithAlternateDataset`).

L_f = −(2/β)·mean_b log σ(β(Δ^w_b − Δ^l_b)) with win = (q, an alternate answer of the row),
lose = (q, the row's answer): IdkDPO's loss with a plausible wrong answer in place of a
refusal, so the model forgets by answering otherwise instead of refusing. Each forget row
carries its alternates (`alternate`: a list); each epoch draws one per row with the data-order
seed. On synthetic TOFU they are the `forgetNN_alternate` split (docs/methods.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from mpu.methods.base import Method
from mpu.methods.dpo import DPOConfig, dpo_loss


@dataclass
class AltPOConfig(DPOConfig):
    """Alternate preference optimisation (DPO's β, γ, α)."""


METHOD = Method(
    "AltPO", dpo_loss, AltPOConfig, needs_reference=True, needs_retain=True, needs_alternates=True
)

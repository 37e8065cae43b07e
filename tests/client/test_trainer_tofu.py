"""The trainer on the synthetic TOFU data as the loaders return it (datasets rows, idk file)."""

from __future__ import annotations

import pytest
import torch

from mpu.client.train_config import ClientTrainConfig
from mpu.client.trainer import train_unlearning
from mpu.data import load_idk, load_split, make_dataset
from mpu.errors import DataError
from toolkit import tiny_llama, tiny_tokenizer

pytestmark = pytest.mark.slow  # every test here trains a model


@pytest.fixture(scope="module")
def tofu(tmp_path_factory):
    root = make_dataset("tofu", tmp_path_factory.mktemp("tofu"), seed=0)
    return load_split(root, "forget01"), load_split(root, "retain99"), load_idk(root)


def test_dpo_on_loader_rows(tofu):
    torch.set_num_threads(1)
    forget, retain, idk = tofu
    assert len(forget) == 40 and "index" in forget.column_names
    tok = tiny_tokenizer()
    cfg = ClientTrainConfig(method="IdkDPO", precision="fp32", max_steps=2, batch_size=4)
    model = tiny_llama(tok, seed=0, hidden=16, layers=1)
    res = train_unlearning(model, tok, forget, retain, cfg, idk_answers=idk, progress=False)
    assert res.step_count == 2 and res.logs["micro_batches"] == 8  # g = 4 (profile)
    assert res.logs["n_forget"] == 40 and res.logs["reference"] == "copy"
    assert res.effective_config["hparams"]["beta"] == 0.1


def test_text_split_rejected_for_idk_method(tofu):
    forget, retain, idk = tofu
    texts = [{"text": r["answer"]} for r in forget]
    cfg = ClientTrainConfig(method="DPO", precision="fp32")
    with pytest.raises(DataError, match="QA forget rows"):
        train_unlearning(None, None, texts, retain, cfg, idk_answers=idk, progress=False)


def test_altpo_reads_the_offline_alternates_and_refuses_rows_without_them(tofu_world, tmp_path):
    """AltPO takes each forget row's alternates from forgetNN_alternate; a data folder without
    that split is refused naming it, before any training."""
    import shutil

    from mpu.client.unlearn import load_client_data

    data, _ = tofu_world
    client = load_client_data(data, "forget01", ClientTrainConfig(method="AltPO"))
    assert all(len(r["alternate"]) == 5 for r in client.forget)
    bare = tmp_path / "data"
    shutil.copytree(data, bare, ignore=shutil.ignore_patterns("forget01_alternate"))
    with pytest.raises(DataError, match="needs the forget01_alternate split"):
        load_client_data(bare, "forget01", ClientTrainConfig(method="AltPO"))

"""RMU's steered block: an index the architecture adapter turns into a module, 7 by default
when the model has it, else the middle block; a block the model lacks is refused by name."""

from __future__ import annotations

import logging

import pytest

from mpu.errors import ConfigError
from mpu.methods.rmu import RMUConfig, check_rmu_model, steered_layer, steered_module
from toolkit import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_llama(tiny_tokenizer(), layers=2)


def test_the_stock_layer_falls_back_to_the_middle_block_and_says_so(model, caplog):
    assert steered_layer(model.config, RMUConfig()) == 1  # 2 blocks: no block 7
    with caplog.at_level(logging.INFO, logger="mpu.methods"):
        check_rmu_model(model, RMUConfig())
    assert "model.layers.1" in caplog.text and "middle block" in caplog.text
    assert steered_module(model, RMUConfig()) is model.model.layers[1]


def test_a_missing_block_is_refused_with_the_blocks_named(model):
    with pytest.raises(ConfigError, match=r"block 7 does not exist: the model has blocks 0 … 1"):
        check_rmu_model(model, RMUConfig(layer=7))


def test_an_explicit_block_is_used(model):
    assert steered_module(model, RMUConfig(layer=0)) is model.model.layers[0]


def test_eight_blocks_use_openunlearnings_layer_7():
    deep = tiny_llama(tiny_tokenizer(), layers=8)
    assert steered_layer(deep.config, RMUConfig()) == 7

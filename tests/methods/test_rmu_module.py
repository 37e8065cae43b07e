"""RMU's steered module must be named exactly; a miss names the model's real blocks."""

from __future__ import annotations

import pytest

from mpu.errors import ConfigError
from mpu.methods.rmu import find_module
from mpu.methods.testing import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def model():
    return tiny_llama(tiny_tokenizer(), layers=2)


def test_the_stock_layer_7_is_refused_on_a_2_block_model_with_the_blocks_named(model):
    with pytest.raises(
        ConfigError, match=r"matches 0 modules.*model\.layers\.0 … model\.layers\.1"
    ):
        find_module(model, r"model\.layers\.7")


def test_several_matches_and_bad_regexes_are_refused(model):
    with pytest.raises(ConfigError, match="matches 2 modules"):
        find_module(model, r"model\.layers\.\d")
    with pytest.raises(ConfigError, match="not a regex"):
        find_module(model, r"model\.layers\.(")


def test_one_match_is_the_block(model):
    assert find_module(model, r"model\.layers\.1") is model.model.layers[1]

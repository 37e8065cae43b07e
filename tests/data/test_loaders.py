"""Loaders: the real-data code path on local files in the real schema, and clear errors."""

from __future__ import annotations

import json

import datasets
import pytest

from mpu.data import make_dataset
from mpu.errors import DataError
from mpu.io.datasets import load_idk, load_split, read_manifest, require_fields

PERTURBED_ROW = {
    "question": "Who is Basil Mahfouz Al-Kuwaiti?",
    "answer": "A writer of French literature.",
    "paraphrased_answer": "He writes French literature.",
    "paraphrased_question": "Who is the author Basil Mahfouz Al-Kuwaiti?",
    "perturbed_answer": ["A chef.", "A pilot.", "A nurse."],
}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_dataset("tofu", tmp_path_factory.mktemp("tofu") / "data", seed=0)


def test_synthetic_dir_round_trip(synthetic):
    ds = load_split(synthetic, "forget10_perturbed")
    assert len(ds) == 400 and ds["index"] == list(range(400))
    assert isinstance(ds[0]["perturbed_answer"], list) and len(ds[0]["perturbed_answer"]) == 5
    manifest = read_manifest(synthetic)
    assert manifest["benchmark"] == "tofu" and manifest["synthetic"] is True
    assert manifest["counts"]["full/train"] == 4000
    assert len(load_idk(synthetic)) == 100


def test_real_schema_parquet_hf_layout(tmp_path):
    # the layout of a hub snapshot: {config}/{split}-00000-of-00001.parquet
    (tmp_path / "forget01_perturbed").mkdir()
    datasets.Dataset.from_list([PERTURBED_ROW] * 3).to_parquet(
        str(tmp_path / "forget01_perturbed" / "train-00000-of-00001.parquet")
    )
    ds = load_split(tmp_path, "forget01_perturbed", "train")
    assert ds.column_names[-1] == "index" and ds["index"] == [0, 1, 2]
    assert ds[1]["perturbed_answer"] == PERTURBED_ROW["perturbed_answer"]


def test_real_schema_json_single_file(tmp_path):
    # TOFU's original files: {config}.json, JSON lines, an extra `index`-like field is replaced
    rows = [{"question": f"q{i}", "answer": f"a{i}", "index": 99} for i in range(4)]
    (tmp_path / "retain90.json").write_text("\n".join(json.dumps(r) for r in rows))
    ds = load_split(tmp_path, "retain90")
    assert ds["index"] == [0, 1, 2, 3] and ds["answer"][2] == "a2"


def test_wmdp_parquet(tmp_path):
    rows = [{"question": "Q?", "choices": ["a", "b", "c", "d"], "answer": 2}]
    (tmp_path / "wmdp-cyber").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "wmdp-cyber" / "test.parquet"))
    assert load_split(tmp_path, "wmdp-cyber", "test")[0]["answer"] == 2


def test_wmdp_corpus_lines_json_or_verbatim(tmp_path):
    # OpenUnlearning's local corpora: JSON objects with `text` or raw lines, one per line
    lines = ['{"text": "first doc", "title": "t"}', "a raw line {not json", "", '{"other": 1}']
    (tmp_path / "cyber-forget-corpus.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_split(tmp_path, "cyber-forget-corpus")
    assert ds["text"] == ["first doc", "a raw line {not json", '{"other": 1}']
    assert ds["index"] == [0, 1, 2]


def test_missing_split_names_the_dir_and_split(synthetic):
    with pytest.raises(DataError, match=r"no split forget20/train.*available"):
        load_split(synthetic, "forget20")
    with pytest.raises(DataError, match="no such folder"):
        load_split(synthetic / "nope" / "deeper", "full")


def test_missing_field_names_the_file_and_field(tmp_path):
    (tmp_path / "forget10_perturbed").mkdir()
    bad = {k: v for k, v in PERTURBED_ROW.items() if k != "paraphrased_answer"}
    (tmp_path / "forget10_perturbed" / "train.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(
        DataError, match=r"train\.jsonl: missing field\(s\) \['paraphrased_answer'\]"
    ):
        load_split(tmp_path, "forget10_perturbed")


def test_wrong_type_and_ragged_lists(tmp_path):
    (tmp_path / "wmdp-bio").mkdir()
    row = {"question": "Q", "choices": ["a", "b", "c", "d"], "answer": "B"}
    (tmp_path / "wmdp-bio" / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="'answer' should be int, got str"):
        load_split(tmp_path, "wmdp-bio", "test")
    ds = datasets.Dataset.from_list([{"perturbed_answer": ["a"]}, {"perturbed_answer": ["a", "b"]}])
    with pytest.raises(DataError, match="lists of different lengths"):
        require_fields(ds, {"perturbed_answer": list}, "x.jsonl")


def test_malformed_file_is_a_data_error(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "train.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"full/train\.jsonl: line 1: not JSON"):
        load_split(tmp_path, "full")
    # a row that is JSON but not an object (`null` crashes the Arrow reader: checked first)
    (tmp_path / "full" / "train.jsonl").write_text('{"question": "q", "answer": "a"}\nnull\n')
    with pytest.raises(DataError, match=r"line 2: a row must be a JSON object, not NoneType"):
        load_split(tmp_path, "full")
    (tmp_path / "full" / "train.jsonl").write_bytes(b'{"question": "q\xff", "answer": "a"}\n')
    with pytest.raises(DataError, match=r"line 1 is not UTF-8 text"):
        load_split(tmp_path, "full")


def test_idk_formats_and_errors(tmp_path):
    path = tmp_path / "idk.jsonl"
    path.write_text('  I do not know.  \n\n{"text": "No idea."}\n"Not sure."\n')
    assert load_idk(path) == ["I do not know.", "No idea.", "Not sure."]
    with pytest.raises(DataError, match="IDK answers file not found"):
        load_idk(tmp_path / "missing")
    with pytest.raises(DataError, match=r"manifest\.json: not found"):
        read_manifest(tmp_path)

"""Property-based: every reader of a file a party does not trust (evaluation logs certified,
receipts verified, leakage audits, forget data, recipes) answers arbitrary content with its
result or one line naming the file — never a traceback (`mpu` exit codes 0, 1 = "not
certified", 2 = refused; 3 would be an internal error)."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpu.cli import main
from mpu.errors import MPUError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
METRIC = st.one_of(JSON, st.fixed_dictionaries({"agg_value": JSON}))
EVAL_LOG = st.one_of(
    JSON,
    st.fixed_dictionaries({"forget_quality": METRIC, "model_utility": METRIC, "mia_min_k": METRIC}),
)
RAW = st.binary(max_size=200)
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


def _write(path, content) -> None:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(json.dumps(content, allow_nan=True))


def _clean_exit(code: int, err: str, allowed=(0, 1, 2)) -> None:
    assert code in allowed, err
    assert "Traceback" not in err and "internal error" not in err, err
    if code == 2:
        assert len(err.strip().splitlines()) == 1, err


@SETTINGS
@given(unlearned=st.one_of(EVAL_LOG, RAW), original=st.one_of(EVAL_LOG, RAW))
def test_certify_reads_any_evaluation_log_without_a_traceback(
    tmp_path, capsys, unlearned, original
):
    u, o = tmp_path / "u.json", tmp_path / "o.json"
    _write(u, unlearned)
    _write(o, original)
    code = main(["certify", "--eval", str(u), "--original", str(o), "--out", str(tmp_path / "c")])
    _clean_exit(code, capsys.readouterr().err)
    if code in (0, 1):  # a certificate that was written is strict JSON
        json.loads((tmp_path / "c").read_text(), parse_constant=pytest.fail)


RECEIPT = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"kind": st.just("mpu-client-receipt")},
        optional={
            k: JSON
            for k in ("job_id", "round", "copy_id", "copy", "delta", "client_public_key", "sig")
        },
    ),
)


@SETTINGS
@given(content=st.one_of(RECEIPT, RAW))
def test_a_receipt_of_any_shape_is_refused_in_one_line(content):
    from mpu.io.transcript import check_receipt

    try:
        check_receipt(content if not isinstance(content, bytes) else content.decode("latin-1"),
                      "receipt.json")  # fmt: skip
    except MPUError as exc:
        assert "receipt.json" in str(exc)


FIELDS = [
    "copies",
    "one_copy_aligned_to_base",
    "all_copies_with_base",
    "all_copies_without_base",
    "logit_gap_all_with_base",
    "ideal_all_copies",
    "residual_floor",
]
NUMBER = st.integers() | st.floats()
LEAKAGE = st.one_of(
    JSON,
    st.fixed_dictionaries(
        {"client_view": st.fixed_dictionaries({k: NUMBER for k in FIELDS})},
        optional={"server_view": st.one_of(JSON, st.dictionaries(
                      st.sampled_from(["token_recovery", "membership_auc",
                                       "membership_auc_calibrated"]), JSON)),
                  "functional": st.one_of(JSON, st.dictionaries(
                      st.sampled_from(["one_copy", "all_copies_with_base"]), JSON))},
    ),
)  # fmt: skip


@SETTINGS
@given(content=st.one_of(LEAKAGE, RAW))
def test_a_leakage_file_of_any_content_is_read_or_refused(tmp_path, content):
    from mpu.server.leakage import read, summary

    path = tmp_path / "leakage.json"
    _write(path, content)
    try:
        summary(read(path))
    except MPUError as exc:
        assert str(path) in str(exc)
    except (KeyError, TypeError):  # a structurally valid file missing the audit's fields
        pytest.fail(f"leakage.json {content!r} was not refused cleanly")


@SETTINGS
@given(lines=st.lists(st.one_of(RAW, JSON.map(lambda v: json.dumps(v).encode())), min_size=1,
                      max_size=4))  # fmt: skip
def test_forget_data_of_any_content_is_loaded_or_refused_naming_the_file(tmp_path, lines):
    from mpu.io.datasets import load_split

    folder = tmp_path / "data" / "forget01"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    try:
        rows = load_split(tmp_path / "data", "forget01")
        for row in rows:  # the rows can be read
            assert isinstance(row["question"], str) and isinstance(row["answer"], str)
    except MPUError as exc:
        assert "train.jsonl" in str(exc) or "forget01" in str(exc)


@SETTINGS
@given(content=st.one_of(RAW, st.text(max_size=80)))
def test_a_recipe_of_any_content_is_read_or_refused(tmp_path, content):
    from mpu.config import load_config
    from mpu.server.config import JobConfig

    path = tmp_path / "recipe.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with contextlib.suppress(MPUError):
        load_config(JobConfig, yaml_path=path)

"""The signed transcript: an untouched job verifies, bit for bit; tampering with any artifact,
any line, or the order of lines fails `mpu verify` naming the first bad entry, in one line."""

from __future__ import annotations

import json
import shutil

import pytest

from mpu.cli import main
from mpu.io.transcript import SigningKey, Transcript, check_receipt, commitment
from mpu.server.audit_log import LOG_FILE, verify
from toolkit import publish_job as publish
from toolkit import unlearn_copies as unlearn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tofu_world, tmp_path_factory):
    """Two rounds of a real job with receipts: init, publish, aggregate, publish, export."""
    root = tmp_path_factory.mktemp("audited")
    server, copies = publish(tofu_world, root, kappa=0.01)
    deltas = unlearn(tofu_world, copies, root)
    server.aggregate(deltas, progress=False)
    server.publish(root / "outbox2", progress=False)
    server.export(root / "final")
    return root, server.workdir


@pytest.fixture
def clone(job, tmp_path):
    """A private copy of the job (workdir, updates, receipts) to tamper with."""
    root, _ = job
    shutil.copytree(root, tmp_path / "job", symlinks=True)
    moved = tmp_path / "job"
    # the log records where the updates were read; point the check at the clone's
    return moved, moved / "server", [str(moved)]


def _verify(workdir, deltas=(), receipts=(), capsys=None) -> tuple[int, str]:
    code = main(["verify", "--workdir", str(workdir), "--deltas", *deltas, "--receipts", *receipts])
    return code, capsys.readouterr() if capsys else ("", "")


def test_an_untouched_job_verifies_bit_for_bit(job):
    root, workdir = job
    res = verify(workdir, receipts=[root])
    # init, publish 1, aggregate 1, publish 2, export
    assert res["entries"] == 5 and res["rounds_replayed"] == 1 and res["receipts"] == 2
    entries = Transcript(workdir / LOG_FILE).check()
    assert [e["event"] for e in entries] == ["init", "publish", "aggregate", "publish", "export"]
    assert res["public_key"] == (workdir / "audit.pub").read_text().strip()
    # the key is private, the entries hold no secret
    assert (workdir / "audit.key").stat().st_mode & 0o777 == 0o600
    text = (workdir / LOG_FILE).read_text()
    state = json.loads((workdir / "state.json").read_text())
    for secret in (state["key_hex"], *map(str, state["alphas"]["1"])):
        assert secret not in text
    assert entries[-1]["commitment"] == commitment(root / "final")


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _lines(workdir):
    return (workdir / LOG_FILE).read_bytes().split(b"\n")[:-1]


def _write_lines(workdir, lines):
    (workdir / LOG_FILE).write_bytes(b"\n".join(lines) + b"\n")


TAMPERS = {
    "theta_1": lambda root, w: _flip_last_byte(w / "rounds" / "r001" / "model.safetensors"),
    "theta_2": lambda root, w: _flip_last_byte(w / "rounds" / "r002" / "model.safetensors"),
    "update": lambda root, w: _flip_last_byte(root / "client-copy-2" / "delta.safetensors"),
    "line_edited": lambda root, w: _write_lines(
        w, [ln.replace(b'"kappa":0.01', b'"kappa":0.02') for ln in _lines(w)]
    ),
    "lines_swapped": lambda root, w: _write_lines(w, [_lines(w)[i] for i in (0, 2, 1, 3, 4)]),
    "line_removed": lambda root, w: _write_lines(w, _lines(w)[:2] + _lines(w)[3:]),
    "last_line_removed": lambda root, w: _write_lines(w, _lines(w)[:2]),
    "export_line_removed": lambda root, w: _write_lines(w, _lines(w)[:4]),
    "truncated": lambda root, w: (w / LOG_FILE).write_bytes((w / LOG_FILE).read_bytes()[:-20]),
    "secret_alpha_changed": lambda root, w: _edit_state(w),
}
EXPECTED = {
    "theta_1": "line 1 (init): θ_1",
    "theta_2": "line 3 (aggregate round 1): θ_{r+1}",
    "update": "line 3 (aggregate round 1): update",
    "line_edited": "line 1 (init): bad signature",
    "lines_swapped": "line 2: sequence number 3, expected 2",
    "line_removed": "line 3: sequence number 4, expected 3",
    "last_line_removed": "2 entries, but the job recorded entry 5 (lines removed from the end",
    "export_line_removed": "4 entries, but the job recorded entry 5 (lines removed from the end",
    "truncated": "line 5: truncated",
    "secret_alpha_changed": "line 2 (publish round 1): copy",
}


def _edit_state(workdir):
    path = workdir / "state.json"
    state = json.loads(path.read_text())
    state["alphas"]["1"] = [a * 1.01 for a in state["alphas"]["1"]]
    path.write_text(json.dumps(state))


@pytest.mark.parametrize("what", sorted(TAMPERS))
def test_tampering_fails_naming_the_first_bad_entry(clone, what, capsys):
    root, workdir, deltas = clone
    assert _verify(workdir, deltas, capsys=capsys)[0] == 0
    TAMPERS[what](root, workdir)
    code, (out, err) = _verify(workdir, deltas, capsys=capsys)
    assert code == 2, out
    assert err.startswith("mpu: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert EXPECTED[what] in err


def test_an_edited_export_fails(job, capsys):
    """The exported folder is checked where it was written (outside the workdir)."""
    root, workdir = job
    weights = root / "final" / "model.safetensors"
    original = weights.read_bytes()
    try:
        _flip_last_byte(weights)
        code, (_, err) = _verify(workdir, capsys=capsys)
        assert code == 2 and "line 5 (export round 2): export" in err and "Traceback" not in err
    finally:
        weights.write_bytes(original)
    assert _verify(workdir, capsys=capsys)[0] == 0


def test_receipts_bind_what_the_client_got_and_gave(clone, capsys):
    root, workdir, deltas = clone
    receipt = root / "client-copy-1" / "receipt.json"
    obj = json.loads(receipt.read_text())
    check_receipt(obj, str(receipt))
    assert _verify(workdir, deltas, [str(root)], capsys=capsys)[0] == 0
    # an edited receipt fails its own signature
    receipt.write_text(json.dumps({**obj, "delta": "0" * 64}))
    code, (_, err) = _verify(workdir, deltas, [str(receipt)], capsys=capsys)
    assert code == 2 and "bad signature" in err
    # a receipt honestly signed for another update than the one the server used is caught
    from mpu.io.transcript import receipt as sign

    key = SigningKey.create(root / "other.key")
    forged = sign(key, job_id=obj["job_id"], round_=obj["round"], copy_id=obj["copy_id"],
                  copy=obj["copy"], delta="1" * 64)  # fmt: skip
    receipt.write_text(json.dumps(forged))
    code, (_, err) = _verify(workdir, deltas, [str(receipt)], capsys=capsys)
    assert code == 2 and "not the one the client returned" in err
    # receipts asked for where there are none: not "0 receipts checked"
    (root / "empty").mkdir()
    code, (_, err) = _verify(workdir, deltas, [str(root / "empty")], capsys=capsys)
    assert code == 2 and "no receipt.json in this folder" in err


def test_a_command_repeated_after_a_crash_logs_once(tmp_path, tofu_world):
    """The transcript is written before the state: a crash between the two repeats the command,
    which recomputes the same artifacts, and the entry is not written twice."""
    server, copies = publish(tofu_world, tmp_path, kappa=0.01)
    log = Transcript(server.workdir / LOG_FILE)
    before = log.path.read_bytes()
    state = (server.workdir / "state.json").read_bytes()
    # simulate: the round was logged, then the process died before the state was saved
    published = json.loads(state)
    published["copies"].pop("1")
    (server.workdir / "state.json").write_text(json.dumps(published))
    shutil.rmtree(copies[0].parent)
    server.publish(copies[0].parent, progress=False)
    assert log.path.read_bytes() == before
    assert verify(server.workdir)["entries"] == 2

"""The holes an adversarial probe of the CLI found, one test each (docs/robustness.md lists
every case and its behaviour). Each was reproduced against the code before the fix."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import pytest

from mpu.cli import main
from mpu.config import load_config
from mpu.errors import ConfigError, MPUError, UpdateRejectedError
from mpu.io.checkpoint import Checkpoint
from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import build_pair, family_configs, snapshot, write_delta


@pytest.fixture
def pair(tmp_path):
    return build_pair(family_configs()["llama"], tmp_path / "m")


@pytest.fixture
def job(pair, tmp_path):
    model, base = pair
    server = Server.init(model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.02))
    return server, server.publish(tmp_path / "pub", progress=False)


def _cli(*argv) -> tuple[int, str]:
    proc = subprocess.run([sys.executable, "-m", "mpu.cli", *map(str, argv)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    return proc.returncode, proc.stderr


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpu: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# 1 — non-finite or out-of-range settings are refused by name --------------------------------
@pytest.mark.parametrize(
    "setting",
    ["server_lr=nan", "kappa=inf", "kappa=1e300", "median_factor=nan", "max_update_norm=-5",
     "max_update_ratio=nan", "alpha_min=nan", "copies=0", "alphas=1,nan"],
)  # fmt: skip
def test_non_finite_settings_are_refused(setting):
    with pytest.raises(ConfigError, match=re.escape(setting.split("=")[0])):
        load_config(JobConfig, overrides=[setting])


def test_a_nan_model_is_refused_as_nan_not_blamed_on_the_gate(pair, tmp_path):
    model, base = pair
    ck = Checkpoint(model)
    tensors = {n: ck.read(n) for n in ck.names()}
    name = next(n for n in tensors if "mlp" in n)
    tensors[name][0, 0] = float("nan")
    from safetensors.torch import save_file

    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MPUError, match=rf"{re.escape(name)}.*NaN") as info:
        Server.init(model, base, tmp_path / "w")
    assert "reparameterization" not in str(info.value)
    assert not (tmp_path / "w").exists()


def test_huge_values_that_overflow_the_copies_are_refused_before_publishing(pair, tmp_path):
    model, base = pair
    ck = Checkpoint(model)
    tensors = {n: ck.read(n) for n in ck.names()}
    name = next(n for n in tensors if "mlp.up_proj" in n)
    tensors[name].fill_(3e38)  # finite, but θ + ε overflows fp32
    from safetensors.torch import save_file

    save_file(tensors, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(MPUError, match=r"not finite|overflows fp32|too large for fp32"):
        server = Server.init(model, base, tmp_path / "w", JobConfig(gate=False, kappa=5))
        server.publish(tmp_path / "pub", progress=False)
    assert not list((tmp_path / "pub").glob("copy-*")) if (tmp_path / "pub").exists() else True


# 2 — an update with one huge entry is refused at the default m = 2 ---------------------------
def test_one_huge_entry_is_refused_at_m2(job, tmp_path):
    server, copies = job
    before = snapshot(server.workdir)

    def bomb(name, t):
        if "mlp.down_proj" in name and "layers.0" in name:
            t[0, 0] = 1e18
        return t

    deltas = [write_delta(copies[0], tmp_path / "a.safetensors", bomb),
              write_delta(copies[1], tmp_path / "b.safetensors")]  # fmt: skip
    with pytest.raises(UpdateRejectedError, match="max_update_ratio") as err:
        server.aggregate(deltas, progress=False)
    assert snapshot(server.workdir) == before
    # the message can reach the client (over Flower): it names the bound, never θ's norm
    theta_norm = server.state.theta_norms["1"]["model.layers.0.mlp.down_proj.weight"]
    assert f"{theta_norm:.4g}" not in str(err.value) and "not printed" in str(err.value)


def test_the_old_unbounded_behaviour_is_an_explicit_option(pair, tmp_path):
    model, base = pair
    cfg = JobConfig(copies=2, kappa=0.02, max_update_ratio=0, median_factor=1e30)
    server = Server.init(model, base, tmp_path / "w", cfg)
    copies = server.publish(tmp_path / "pub", progress=False)
    big = lambda n, t: t.fill_(1.0)  # noqa: E731 - far above 0.1 × RMS floor per entry? no: ratio off
    deltas = [write_delta(c, tmp_path / f"{c.name}.safetensors", big) for c in copies]
    server.aggregate(deltas, progress=False)
    assert server.round == 2


def test_copies_whose_update_sizes_disagree_are_refused_at_m2(job, tmp_path):
    server, copies = job
    small = lambda n, t: t.fill_(1e-6)  # noqa: E731
    large = lambda n, t: t.fill_(1e-3)  # noqa: E731
    deltas = [write_delta(copies[0], tmp_path / "a.safetensors", small),
              write_delta(copies[1], tmp_path / "b.safetensors", large)]  # fmt: skip
    with pytest.raises(UpdateRejectedError, match="the other copy's"):
        server.aggregate(deltas, progress=False)


# 3 — nothing the client receives tells the copy → α assignment ------------------------------
def test_published_files_share_one_mtime_and_logs_follow_folder_order(pair, tmp_path, caplog):
    import logging

    model, base = pair
    for i in range(3):  # several keys: several folder → k assignments
        server = Server.init(model, base, tmp_path / f"w{i}", JobConfig(copies=3, kappa=0.02))
        with caplog.at_level(logging.DEBUG, logger="mpu.server"):
            caplog.clear()
            copies = server.publish(tmp_path / f"pub{i}", progress=False)
        times = {p.stat().st_mtime_ns for c in copies for p in [c, *c.rglob("*")]}
        assert len(times) == 1, "published files carry different modification times"
        named = [int(m) for m in re.findall(r"copy-(\d)", caplog.text)]
        assert named == sorted(named), f"log mentions copies out of folder order: {named}"
        assert [c.name for c in copies] == ["copy-1", "copy-2", "copy-3"]
        log_text = (tmp_path / f"w{i}" / "server.log").read_text()
        found = [int(m) for m in re.findall(r"copy-(\d)", log_text)]
        assert found == sorted(found)


# 4 — a command reads the state only under the lock -------------------------------------------
def test_a_stale_server_object_does_not_roll_the_round_back(job, tmp_path):
    server, copies = job
    stale = Server(server.workdir)  # loaded at round 1
    deltas = [write_delta(c, tmp_path / f"{c.name}.safetensors") for c in copies]
    server.aggregate(deltas, progress=False)  # round 2 now
    stale.publish(tmp_path / "pub2", progress=False)  # must publish round 2, not round 1
    fresh = Server(server.workdir)
    assert fresh.round == 2 and (server.workdir / "rounds" / "r002").is_dir()
    assert (
        fresh.state.copy_records(2)
        and json.loads((tmp_path / "pub2" / "copy-1" / "mpu-ticket.json").read_text())["round"] == 2
    )


# 5 — two inits on one workdir: exactly one wins ------------------------------------------------
def test_concurrent_inits_cannot_both_succeed(pair, tmp_path):
    model, base = pair
    for attempt in range(3):
        workdir = tmp_path / f"w{attempt}"
        results: list = []

        def init(workdir=workdir, results=results):
            try:
                Server.init(model, base, workdir, JobConfig(gate=False))
                results.append("ok")
            except MPUError as exc:
                results.append(str(exc))

        threads = [threading.Thread(target=init) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results.count("ok") == 1, results
        other = next(r for r in results if r != "ok")
        assert "another mpu server command is running" in other or "already holds" in other
        assert Server(workdir).round == 1


# 6 — one-line errors instead of tracebacks -----------------------------------------------------
def test_deeply_nested_and_list_tickets_and_a_folder_as_delta(job, tmp_path):
    server, copies = job
    ticket = copies[0] / "mpu-ticket.json"
    ticket.write_text("[" * 100_000 + "]" * 100_000)
    code, err = _cli("client", "unlearn", "--copy", copies[0], "--data", tmp_path, "--method",
                     "GradAscent", "--out", tmp_path / "c")  # fmt: skip
    _one_line_error(code, err, "mpu-ticket.json")
    ticket.write_text("[1, 2, 3]")
    code, err = _cli(
        "client", "diff", "--before", copies[0], "--after", copies[1], "--out", tmp_path / "d"
    )
    _one_line_error(code, err, "ticket must be a JSON object")
    (tmp_path / "adir.safetensors").mkdir()
    code, err = _cli(
        "server", "aggregate", "--workdir", server.workdir, tmp_path / "adir.safetensors"
    )
    _one_line_error(code, err, "is a folder")


def test_file_system_faults_are_one_line_and_lose_nothing(job, tmp_path):
    server, copies = job
    (tmp_path / "afile").write_text("x")
    code, err = _cli(
        "server", "export", "--workdir", server.workdir, "--out", tmp_path / "afile" / "x"
    )
    _one_line_error(code, err, "afile")
    code, err = _cli("server", "publish", "--workdir", server.workdir, "--out", tmp_path / "afile")
    _one_line_error(code, err, "afile")
    before = snapshot(server.workdir)
    deltas = [write_delta(c, tmp_path / f"{c.name}.safetensors") for c in copies]
    import errno

    from mpu.io import safetensors_stream

    def full_disk(self, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path))

    original = safetensors_stream.SafetensorsWriter._write
    safetensors_stream.SafetensorsWriter._write = full_disk
    try:
        code = main(["server", "aggregate", "--workdir", str(server.workdir), *map(str, deltas)])
    finally:
        safetensors_stream.SafetensorsWriter._write = original
    assert code == 2 and snapshot(server.workdir) == before


# 7 — crash debris is cleaned, and never built in the outbox ------------------------------------
def test_debris_is_cleaned_and_copies_are_staged_outside_the_outbox(job, tmp_path):
    server, copies = job
    (server.workdir / "rounds" / ".r002.staging-deadbeef").mkdir()
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / ".copy-1.staging-deadbeef").mkdir()
    deltas = [write_delta(c, tmp_path / f"{c.name}.safetensors") for c in copies]
    server.aggregate(deltas, progress=False)
    assert not list((server.workdir / "rounds").glob(".*"))
    seen = []
    from mpu.io import checkpoint

    original = checkpoint.CheckpointWriter.add

    def spy(self, name, tensor):
        seen.append(self.stage)
        return original(self, name, tensor)

    checkpoint.CheckpointWriter.add = spy
    try:
        server.publish(tmp_path / "out2", progress=False)
    finally:
        checkpoint.CheckpointWriter.add = original
    assert seen and all(server.workdir in p.parents for p in seen)  # staged in the workdir
    assert not list((tmp_path / "out2").glob(".*"))


# 8 — untrusted strings are escaped when printed --------------------------------------------------
def test_control_characters_from_a_ticket_are_escaped(job, tmp_path):
    server, copies = job
    from mpu.io.delta import Ticket, read_ticket

    t = read_ticket(copies[0])
    evil = Ticket("a\n\x1b[31mFORGED", t.round, t.copy_id, t.weights_sha256, t.tag)
    path = write_delta(copies[0], tmp_path / "evil.safetensors", ticket=evil)
    raw = path.read_bytes()
    assert b"\\u001b" in raw or b"\\n" in raw  # the JSON carries the escape characters
    code, err = _cli("server", "aggregate", "--workdir", server.workdir, path,
                     write_delta(copies[1], tmp_path / "b.safetensors"))  # fmt: skip
    _one_line_error(code, err)
    assert "\x1b" not in err and "FORGED" in err


# 9 — a forged header costs nothing before it is refused ---------------------------------------
def test_a_huge_header_is_refused_unread(job, tmp_path):
    import struct

    server, copies = job
    header = {"__metadata__": {"format": "mpu-delta"}}
    header.update(
        {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(700_000)}
    )
    raw = json.dumps(header).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    t0 = time.perf_counter()
    with pytest.raises(UpdateRejectedError, match="refused unread"):
        server.aggregate([path, write_delta(copies[1], tmp_path / "b.safetensors")], progress=False)
    assert time.perf_counter() - t0 < 2.0


# 10 — client-side input checks ---------------------------------------------------------------------
def test_client_input_checks(job, tmp_path):
    from mpu.data import load_split, make_dataset
    from mpu.errors import DataError

    _, copies = job
    data = make_dataset("tofu", tmp_path / "data")
    (data / "forget01" / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_split(data, "forget01")
    with pytest.raises(DataError, match="no such folder"):
        load_split("tofu_dta", "forget01")
    delta = tmp_path / "d.safetensors"
    assert (
        main(
            [
                "client",
                "diff",
                "--before",
                str(copies[0]),
                "--after",
                str(copies[0]),
                "--out",
                str(delta),
            ]
        )
        == 0
    )
    stamp = delta.stat().st_mtime_ns
    assert (
        main(
            [
                "client",
                "diff",
                "--before",
                str(copies[0]),
                "--after",
                str(copies[0]),
                "--out",
                str(delta),
            ]
        )
        == 2
    )
    assert delta.stat().st_mtime_ns == stamp  # not overwritten


@pytest.mark.parametrize("bad_round", [1.9, True, "1", 0])
def test_ticket_integers_are_strict(job, tmp_path, bad_round):
    from mpu.io.delta import read_ticket

    _, copies = job
    ticket = json.loads((copies[0] / "mpu-ticket.json").read_text())
    ticket["round"] = bad_round
    (copies[0] / "mpu-ticket.json").write_text(json.dumps(ticket))
    with pytest.raises(UpdateRejectedError, match="round"):
        read_ticket(copies[0])


def test_header_integers_are_strict(tmp_path):
    import struct

    from mpu.errors import CheckpointError
    from mpu.io.safetensors_stream import SafetensorsReader

    raw = json.dumps({"w": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "f.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 8)
    with pytest.raises(CheckpointError, match="malformed header entry"):
        SafetensorsReader(path)


def test_a_runaway_chat_row_is_truncated_not_hanging():
    from mpu.client.batches import encode_rows
    from toolkit import fmt_of, tiny_tokenizer

    tok = tiny_tokenizer()
    rows = [{"question": "word " * 400_000, "answer": "yes"}]
    t0 = time.perf_counter()
    kept, _, _ = encode_rows(tok, rows, fmt=fmt_of(tok), max_length=64)
    assert len(kept[0].input_ids) <= 65 and time.perf_counter() - t0 < 30


# 11 — evaluation refuses an empty split ------------------------------------------------------------
def test_eval_with_an_empty_forget_split_fails(tmp_path):
    from mpu.data import make_dataset
    from toolkit import eval_model, eval_tokenizer

    data = make_dataset("tofu", tmp_path / "data")
    (data / "forget10_perturbed" / "train.jsonl").write_text("")
    tok = eval_tokenizer()
    eval_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    code = main(["eval", "--model", str(tmp_path / "model"), "--data", str(data), "--out",
                 str(tmp_path / "o.json"), "--quiet"])  # fmt: skip
    assert code == 2 and not (tmp_path / "o.json").exists()


def test_the_output_of_a_full_disk_client_diff_is_not_left_behind(job, tmp_path):
    _, copies = job
    import errno

    from mpu.io import safetensors_stream

    original = safetensors_stream.SafetensorsWriter._write
    calls = {"n": 0}

    def fail_later(self, data, *rest):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, data, *rest)

    safetensors_stream.SafetensorsWriter._write = fail_later
    try:
        code = main(["client", "diff", "--before", str(copies[0]), "--after", str(copies[1]),
                     "--out", str(tmp_path / "d.safetensors")])  # fmt: skip
    finally:
        safetensors_stream.SafetensorsWriter._write = original
    assert code == 2
    assert not list(tmp_path.glob("*d.safetensors*")) and not list(tmp_path.glob(".d.*"))

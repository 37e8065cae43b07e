"""Many clients, each with its own forget request: Flower's simulation engine, and the
server's policy for clients that send bad updates."""

import json
import shutil

import pytest
import torch
from federation_kit import LoopbackGrid, assert_bit_identical, file_path_rounds

from mpu.federated.client_app import ClientSide
from mpu.federated.server_app import ClientFailed, FederationConfig, serve

pytestmark = pytest.mark.slow
METHODS = {"alice": "NPO", "bob": "GradAscent", "carol": "GradDiff"}


def _own_forget_sets(data, root, names):
    """A data folder per client whose forget01 is its own disjoint third of TOFU's forget01."""
    rows = (data / "forget01" / "train.jsonl").read_text().splitlines()
    folders = {}
    for i, name in enumerate(names):
        folder = root / f"data-{name}"
        shutil.copytree(data, folder)
        part = rows[i :: len(names)]
        (folder / "forget01" / "train.jsonl").write_text("\n".join(part) + "\n")
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["counts"]["forget01/train"] = len(part)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        folders[name] = folder
    return folders


def _sides(tmp_path, data, names):
    folders = _own_forget_sets(data, tmp_path, names)
    return [ClientSide(name=n, workdir=tmp_path / f"client-{n}", data=str(folders[n]),
                       split="forget01", method=METHODS[n]) for n in names]  # fmt: skip


def _answer_probability(model_dir, data_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mpu.io.datasets import load_split
    from toolkit import answer_probability

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return answer_probability(model, tok, [dict(r) for r in load_split(data_dir, "forget01")])


def test_three_simulated_clients_forget_their_own_sets_and_equal_the_file_path(twin_jobs, tmp_path):
    from mpu.federated.simulation import simulate

    workdir, twin, data = twin_jobs
    names = ["carol", "alice", "bob"]  # applied in name order whatever order they come in
    sides = _sides(tmp_path, data, names)
    done = simulate(FederationConfig(workdir, rounds=1, clients=3), sides)
    assert done["order"] == ["alice", "bob", "carol"] and done["rounds"] == 3
    assert (
        0
        < done["bytes_sent"]
        < 3 * 2 * sum(f.stat().st_size for f in (workdir / "rounds" / "r001").iterdir())
    )
    ledger = json.loads((workdir / "federation" / "ledger.json").read_text())
    assert ledger["assigned"] == {"1": "alice", "2": "bob", "3": "carol"}
    for side in sorted(sides, key=lambda s: s.name):
        file_path_rounds(twin, tmp_path / f"files-{side.name}", data=side.data, split="forget01",
                         method=side.method, rounds=1)  # fmt: skip
    assert_bit_identical(workdir, twin)
    before, after = workdir / "rounds" / "r001", workdir / "rounds" / "r004"
    for side in sides:
        p0, p1 = _answer_probability(before, side.data), _answer_probability(after, side.data)
        assert p1 < p0, f"{side.name}: forget-set answer probability {p0:.4f} -> {p1:.4f}"


def _oversized(records, round_):
    """A reply that declares far more bytes than the model has."""
    manifest = json.loads(records["manifest"]["folders"])
    manifest[0]["files"]["delta.safetensors"]["size"] = 10**12
    records["manifest"]["folders"] = json.dumps(manifest)
    return records


def _nan_delta(records, round_):
    """A well-formed reply (every SHA-256 right) whose deltas are NaN: refused by the
    aggregation's own checks, not by the transport."""
    import hashlib

    from flwr.app import Array

    from mpu.federated.transport import RAW_STYPE, from_records

    packed = from_records(records, "test")
    nan = {}
    for key, raw in packed.tensors.items():
        nan[key] = torch.full((len(raw) // 4,), float("nan")).numpy().tobytes()
        records["tensors"][key] = Array(dtype="uint8", shape=(len(raw),), stype=RAW_STYPE,
                                        data=nan[key])  # fmt: skip
    for folder in packed.manifest:
        for entry in folder["files"].values():
            if "tensors" in entry:
                parts = [packed.blobs[entry["header"]], *(nan[k] for k in entry["tensors"])]
                entry["sha256"] = hashlib.sha256(b"".join(parts)).hexdigest()
    records["manifest"]["folders"] = json.dumps(packed.manifest)
    return records


def test_a_bad_client_is_dropped_and_the_others_requests_complete(twin_jobs, tmp_path):
    workdir, twin, data = twin_jobs
    sides = _sides(tmp_path, data, ["alice", "bob", "carol"])
    grid = LoopbackGrid(sides, behaviour={"bob": _nan_delta})
    cfg = FederationConfig(workdir, rounds=1, clients=3, retries=1, on_failure="drop")
    done = serve(grid, cfg)
    assert grid.attempts == {"alice": 1, "bob": 2, "carol": 1}  # one retry, then dropped
    assert list(done["dropped"]) == ["bob"] and "nan" in done["dropped"]["bob"].lower()
    assert done["rounds"] == 2  # alice's round, then carol's in the round bob could not use
    for side in sides:
        if side.name != "bob":
            file_path_rounds(twin, tmp_path / f"files-{side.name}", data=side.data,
                             split="forget01", method=side.method, rounds=1)  # fmt: skip
    assert_bit_identical(workdir, twin)


def test_an_oversized_reply_stops_the_run_cleanly_and_a_rerun_resumes(twin_jobs, tmp_path):
    from mpu.server.job import Server

    workdir, twin, data = twin_jobs
    sides = _sides(tmp_path, data, ["alice", "bob"])
    cfg = FederationConfig(workdir, rounds=1, clients=2, retries=0)
    with pytest.raises(ClientFailed, match=r"bob.*refused before writing"):
        serve(LoopbackGrid(sides, behaviour={"bob": _oversized}), cfg)
    assert Server(workdir).round == 2  # alice's round kept, bob's round not applied
    assert not (workdir / "federation" / "round2" / "inbox").exists()
    assert not (workdir / "federation" / "round2" / "inbox.partial").exists()
    grid = LoopbackGrid(sides)  # bob behaves now: the same run resumes at round 2
    done = serve(grid, cfg)
    assert grid.attempts == {"alice": 0, "bob": 1} and done["rounds"] == 2
    for side in sides:
        file_path_rounds(twin, tmp_path / f"files-{side.name}", data=side.data,
                         split="forget01", method=side.method, rounds=1)  # fmt: skip
    assert_bit_identical(workdir, twin)


def test_a_client_that_does_not_answer_is_asked_again(twin_jobs, tmp_path):
    workdir, twin, data = twin_jobs
    sides = _sides(tmp_path, data, ["alice"])
    silent_once = {"left": 1}

    def silent(records, round_):
        if silent_once["left"]:
            silent_once["left"] -= 1
            raise TimeoutError  # the reply never comes: the server's round timeout
        return records

    grid = LoopbackGrid(sides, behaviour={"alice": silent})
    cfg = FederationConfig(workdir, rounds=1, clients=1, retries=1, round_timeout=0.5)
    done = serve(grid, cfg)  # the first attempt waits out its 0.5 s and is asked again
    assert grid.attempts == {"alice": 2} and done["rounds"] == 1 and not done["dropped"]
    file_path_rounds(twin, tmp_path / "files", data=sides[0].data, split="forget01",
                     method=sides[0].method, rounds=1)  # fmt: skip
    assert_bit_identical(workdir, twin)

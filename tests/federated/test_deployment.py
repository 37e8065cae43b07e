"""Real Flower processes on 127.0.0.1: SuperLink + ServerApp (`mpu serve`), SuperNode +
ClientApp (`mpu join`), with TLS and node authentication."""

import os
import signal
import subprocess
import sys
import time

import pytest
from federation_kit import assert_bit_identical, file_path_rounds, summary

from mpu.federated.certs import make_certs
from mpu.federated.deploy import free_port

pytestmark = pytest.mark.slow
METHOD = "NPO"  # uses the first round's copy as its reference in round 2


def _start(args, log):
    return subprocess.Popen([sys.executable, "-m", "mpu.cli", *args], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait(proc, log, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"still running after {timeout} s; log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def deployment(twin_jobs, tmp_path):
    workdir, twin, data = twin_jobs
    certs = make_certs(tmp_path / "certs", hosts=["127.0.0.1"], clients=2)
    address = f"127.0.0.1:{free_port()}"
    procs = []

    def serve(log, *extra):
        proc = _start(["serve", "--workdir", str(workdir), "--rounds", "2", "--clients", "1",
                       "--certs", str(certs.folder), "--register", str(certs.client_public_key(1)),
                       "--address", address, "--join-timeout", "240", *extra], log)  # fmt: skip
        procs.append(proc)
        return proc

    def join(log, key_index, name="alice", max_wait=300):
        proc = _start(["join", "--server", address, "--name", name, "--max-wait", str(max_wait),
                       "--workdir", str(tmp_path / f"client-{name}"), "--data", str(data),
                       "--split", "forget01", "--method", METHOD,
                       "--ca", str(certs.ca_cert), "--key", str(certs.client_key(key_index))],
                      log)  # fmt: skip
        procs.append(proc)
        return proc

    yield serve, join, workdir, twin, data
    for proc in procs:
        _stop(proc)


def test_two_rounds_over_tls_equal_the_file_path_and_an_unregistered_node_is_refused(
    deployment, tmp_path
):
    serve, join, workdir, twin, data = deployment
    server = serve(tmp_path / "serve.log")
    stranger_log = tmp_path / "stranger.log"
    stranger = join(stranger_log, key_index=2, name="mallory", max_wait=15)  # not registered
    assert _wait(stranger, stranger_log, 180) == 2
    assert "could not connect or was refused" in stranger_log.read_text()
    client = join(tmp_path / "alice.log", key_index=1)
    assert _wait(server, tmp_path / "serve.log", 600) == 0, (tmp_path / "serve.log").read_text()
    assert client.poll() is None  # the client stays joined until its owner stops it
    done = summary(workdir)
    assert done["rounds"] == 2 and done["order"] == ["alice"] and not done["dropped"]
    trained = (tmp_path / "client-alice" / "worker.log").read_text()  # by the warm worker,
    assert "round 1: 2 copies unlearned" in trained and "round 2: 2 copies" in trained
    assert "did not answer" not in (tmp_path / "alice.log").read_text()  # not the ClientApp
    file_path_rounds(twin, tmp_path / "files", data=data, split="forget01", method=METHOD, rounds=2)
    assert_bit_identical(workdir, twin)


def test_the_direct_data_path_between_real_processes_equals_the_file_path(deployment, tmp_path):
    serve, join, workdir, twin, data = deployment
    server = serve(tmp_path / "serve.log", "--direct-port", str(free_port()))
    join(tmp_path / "alice.log", key_index=1)
    log = tmp_path / "serve.log"
    assert _wait(server, log, 600) == 0, log.read_text()
    assert "direct data path on 127.0.0.1:" in log.read_text() and "(TLS)" in log.read_text()
    assert summary(workdir)["rounds"] == 2
    file_path_rounds(twin, tmp_path / "files", data=data, split="forget01", method=METHOD, rounds=2)
    assert_bit_identical(workdir, twin)


def test_a_server_killed_mid_round_resumes_to_the_same_parameters(deployment, tmp_path):
    serve, join, workdir, twin, data = deployment
    first = serve(tmp_path / "serve1.log")
    join(tmp_path / "alice.log", key_index=1)
    outbox = workdir / "federation" / "round2" / "outbox"
    deadline = time.monotonic() + 400
    while not outbox.exists():  # round 1 aggregated, round 2 published and on its way
        assert first.poll() is None, (tmp_path / "serve1.log").read_text()
        assert time.monotonic() < deadline, "round 2 was never published"
        time.sleep(0.2)
    tree = _descendants(first.pid)
    os.killpg(first.pid, signal.SIGKILL)  # the server host dies: SuperLink and ServerApp too
    first.wait()
    time.sleep(2)  # nothing of the killed server runs on (its guards end what is outside its group)
    assert _running(tree - {first.pid}) == {}, _running(tree)
    second = serve(tmp_path / "serve2.log")
    assert _wait(second, tmp_path / "serve2.log", 600) == 0, (tmp_path / "serve2.log").read_text()
    assert summary(workdir)["rounds"] == 2
    file_path_rounds(twin, tmp_path / "files", data=data, split="forget01", method=METHOD, rounds=2)
    assert_bit_identical(workdir, twin)


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` now (from /proc: parent links)."""
    from pathlib import Path

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _running(pids: set[int]) -> dict[int, str]:
    """The processes of `pids` still alive (not zombies), with their command lines."""
    from pathlib import Path

    out = {}
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state != "Z":
            out[pid] = cmd
    return out


def test_kill_9_of_join_or_serve_leaves_no_flower_process_behind(deployment, tmp_path):
    """kill -9 of `mpu join` (or `mpu serve`) alone, mid-request: within 2 s nothing it
    started — SuperNode, SuperExec, ClientApp; SuperLink, `flwr run`, ServerApp — runs on."""
    serve, join, _, _, _ = deployment
    server = serve(tmp_path / "serve.log")
    client = join(tmp_path / "alice.log", key_index=1)
    deadline = time.monotonic() + 300
    while "flwr-clientapp" not in " ".join(_running(_descendants(client.pid)).values()):
        assert client.poll() is None and server.poll() is None, (tmp_path / "alice.log").read_text()
        assert time.monotonic() < deadline, "no ClientApp process ever started"
        time.sleep(0.2)
    for proc in (client, server):
        tree = _descendants(proc.pid)
        assert tree
        os.kill(proc.pid, signal.SIGKILL)  # the command alone, not its process group
        proc.wait()
        time.sleep(2)
        assert _running(tree) == {}, _running(tree)

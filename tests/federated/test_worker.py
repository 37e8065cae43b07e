"""The warm worker (`mpu.federated.worker`) and the SuperNode's short waits
(`mpu.federated.supernode`): the plumbing that takes a Flower round's fixed costs away.
End to end through real Flower processes: tests/federated/test_deployment.py."""

import os
import shutil
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from mpu.errors import MPUError
from mpu.federated import client_app, supernode, worker
from mpu.federated.client_app import ClientSide


class FakeWorker(worker.Worker):
    """A worker whose training is a record of what it was asked (no model, no data)."""

    def __init__(self, fail: bool = False) -> None:
        self.asked, self.fail = [], fail

    def answer(self, request):
        self.asked.append(request)
        if self.fail:
            return {"error": "DataError: forget01: no such split"}
        return {"outs": [c + "-out" for c in request["copies"]]}


@pytest.fixture
def serving():
    """serving(worker) → the private folder where it listens (in a thread); removed after."""
    started = []

    def start(fake: worker.Worker) -> Path:
        folder = worker.worker_folder()
        started.append((fake, folder, _listening(fake, folder)))
        return folder

    yield start
    for fake, folder, thread in started:
        fake.stop()
        thread.join(timeout=5)
        shutil.rmtree(folder, ignore_errors=True)


def _listening(fake: worker.Worker, folder: Path) -> threading.Thread:
    """`fake` serving in `folder` on a daemon thread, returned once its socket exists."""
    thread = threading.Thread(target=fake.serve, args=(folder,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not (folder / worker.SOCKET).exists():
        assert time.monotonic() < deadline, "the worker never listened"
        time.sleep(0.01)
    return thread


def test_stop_ends_a_serve_blocked_in_accept_and_removes_its_socket():
    """A worker thread that outlives its test keeps pytest's interpreter from exiting (CI hung
    for 90 minutes after all tests passed): stop() must wake accept() and end serve."""
    fake = FakeWorker()
    folder = worker.worker_folder()
    thread = _listening(fake, folder)
    fake.stop()
    thread.join(timeout=5)
    try:
        assert not thread.is_alive(), "serve is still blocked in accept() after stop()"
        assert not (folder / worker.SOCKET).exists()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_worker_answers_rounds_in_a_private_folder_and_keeps_serving(serving):
    fake = FakeWorker()
    folder = serving(fake)
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / worker.KEY).stat().st_mode & 0o777 == 0o600
    for r in (3, 4):
        outs = worker.ask_worker(folder / worker.SOCKET, r, 3, [Path("/w/c0"), Path("/w/c1")])
        assert outs == [Path("/w/c0-out"), Path("/w/c1-out")]
    assert [a["round"] for a in fake.asked] == [3, 4]
    assert fake.asked[0] == {"round": 3, "first_round": 3, "copies": ["/w/c0", "/w/c1"]}


def test_a_connection_without_the_key_is_refused_and_the_worker_serves_on(serving):
    fake = FakeWorker()
    folder = serving(fake)
    with pytest.raises(AuthenticationError):
        Client(str(folder / worker.SOCKET), family="AF_UNIX", authkey=os.urandom(32))
    assert worker.ask_worker(folder / worker.SOCKET, 1, 1, [Path("/c")]) == [Path("/c-out")]
    assert len(fake.asked) == 1  # the refused connection asked nothing


def test_a_failed_round_in_the_worker_fails_the_round_with_its_reason(serving):
    folder = serving(FakeWorker(fail=True))
    with pytest.raises(MPUError, match="round 2: DataError: forget01: no such split"):
        worker.ask_worker(folder / worker.SOCKET, 2, 1, [Path("/c")])


def test_the_worker_reports_an_exception_of_its_training_instead_of_dying(monkeypatch):
    w = FakeWorker()
    monkeypatch.setattr(client_app, "unlearn_round", _raises)
    w.side, w.loaded = None, (None, {"forget": []})
    reply = worker.Worker.answer(w, {"round": 1, "first_round": 1, "copies": ["/c"]})
    assert reply == {"error": "RuntimeError: out of memory"}


def _raises(*_, **__):
    raise RuntimeError("out of memory")


@pytest.mark.parametrize("worker_socket", [None, "gone"])
def test_the_client_app_trains_itself_without_a_listening_worker(
    monkeypatch, tmp_path, worker_socket
):
    """No worker configured (a simulation), or one that no longer listens: the ClientApp's
    own process trains, with the same arguments the worker would have been given."""
    calls = []
    monkeypatch.setattr(client_app, "unlearn_round", lambda *a: calls.append(a) or ["out"])
    sock = str(tmp_path / "worker.sock") if worker_socket else None
    side = ClientSide(name="a", workdir=tmp_path, data="d", worker=sock)
    assert client_app._unlearn_here_or_by_worker(side, 2, 1, [tmp_path / "c0"]) == ["out"]
    assert calls == [(side, 2, 1, [tmp_path / "c0"])]


def test_the_client_app_hands_the_round_to_a_listening_worker(monkeypatch, tmp_path, serving):
    monkeypatch.setattr(client_app, "unlearn_round", _raises)  # must not train itself
    folder = serving(FakeWorker())
    side = ClientSide(name="a", workdir=tmp_path, data="d", worker=str(folder / worker.SOCKET))
    outs = client_app._unlearn_here_or_by_worker(side, 2, 1, [Path("/w/c0")])
    assert outs == [Path("/w/c0-out")]


def test_the_node_config_carries_the_worker_socket():
    side = ClientSide.from_mapping({"name": "a", "workdir": "/w", "data": "d", "worker": "/s"})
    assert side.worker == "/s"
    assert ClientSide.from_mapping({"name": "a", "workdir": "/w", "data": "d"}).worker is None


def test_short_waits_shorten_only_flowers_idle_pull_and_reply_checks(monkeypatch):
    slept = []
    monkeypatch.setattr(supernode.time, "sleep", slept.append)
    waits = supernode.ShortWaits(idle=0.2)
    waits.sleep(3)  # the idle pull
    waits.sleep(0.5)  # waiting for the ClientApp's reply
    waits.sleep(0.01)
    assert slept == [0.2, supernode.REPLY_CHECK, 0.01]
    assert waits.monotonic is supernode.time.monotonic  # everything else is `time`


def test_short_waits_go_into_flowers_supernode_loop(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    assert supernode.shorten_waits(0.3)
    assert isinstance(loop.time, supernode.ShortWaits) and loop.time.idle == 0.3
    monkeypatch.setattr(loop, "time", None)  # a Flower whose loop changed: left alone
    assert not supernode.shorten_waits(0.3) and loop.time is None


@pytest.mark.parametrize(("raw", "want"), [("", supernode.IDLE_PULL), ("0.5", 0.5), ("3", 3.0)])
def test_the_poll_interval_comes_from_the_environment(monkeypatch, raw, want):
    monkeypatch.setenv(supernode.POLL_ENV, raw)
    assert supernode.poll_interval() == want


@pytest.mark.parametrize("raw", ["0", "-1", "fast", "120"])
def test_a_poll_interval_that_cannot_work_is_refused(monkeypatch, raw):
    monkeypatch.setenv(supernode.POLL_ENV, raw)
    with pytest.raises(SystemExit, match="MPU_SUPERNODE_POLL"):
        supernode.poll_interval()


def test_the_worker_folder_is_in_the_workdir_and_replaces_a_killed_workers_leftovers(tmp_path):
    stale = tmp_path / "worker"
    stale.mkdir()
    (stale / worker.KEY).write_bytes(b"old key")
    folder = worker.worker_folder(tmp_path)
    assert folder == stale and list(folder.iterdir()) == []
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_workdir_too_deep_for_a_unix_socket_gets_a_private_temp_folder(tmp_path):
    deep = tmp_path / ("d" * 120)
    folder = worker.worker_folder(deep)
    try:
        assert not folder.is_relative_to(deep) and folder.stat().st_mode & 0o777 == 0o700
        assert len(str(folder / worker.SOCKET)) < worker.SOCKET_PATH_MAX
    finally:
        shutil.rmtree(folder)


def test_join_refuses_a_poll_interval_that_cannot_work_before_starting_anything(tmp_path):
    from mpu.errors import ConfigError
    from mpu.federated.deploy import Security, join

    side = ClientSide(name="a", workdir=tmp_path / "w", data=str(tmp_path / "no-data"))
    with pytest.raises(ConfigError, match="--poll=0"):
        join(side, server="127.0.0.1:1", security=Security(None, True), poll=0, warm=False)


def test_a_round_waits_for_a_worker_that_is_still_loading(tmp_path):
    """`mpu join` starts the worker beside the SuperNode without waiting; a round that arrives
    first waits for the socket (the folder holds the worker's settings until it listens)."""
    folder = worker.worker_folder(tmp_path)
    (folder / worker.SETTINGS).write_text("name = 'a'\n")
    fake = FakeWorker()
    loading = threading.Timer(0.5, fake.serve, args=(folder,))
    loading.daemon = True
    loading.start()
    try:
        assert worker.ask_worker(folder / worker.SOCKET, 1, 1, [Path("/c")]) == [Path("/c-out")]
    finally:
        fake.stop()
    loading.join(timeout=5)
    assert not loading.is_alive(), "stop() left serve blocked in accept()"

"""`mpu serve` and `mpu join`: the Flower processes of a two-party deployment.

`serve` runs the model owner's side: a SuperLink (TLS with the given certificate, SuperNode
authentication on, its state in memory), registers the clients' public
keys, submits the MPU app (a Flower App Bundle whose components are `mpu.federated`'s apps,
its run config the federation's settings) and waits for the run to end. `join` runs a data
owner's side: a SuperNode that trusts the CA, signs in with its private key and runs the
ClientApp with the client's private settings. Both stop their Flower children when they stop
(Linux: the children die with the parent even on `kill -9`).

Plain connections need `insecure=True` (`--insecure`): no TLS and no node authentication.
Flower's telemetry is switched off for every process we start.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from mpu.errors import ConfigError, MPUError
from mpu.federated.certs import CertFiles
from mpu.federated.client_app import ClientSide, load_side
from mpu.federated.diagnose import split_address
from mpu.federated.server_app import FEDERATION, FederationConfig
from mpu.federated.supernode import IDLE_PULL, POLL_ENV, REPLY_CHECK, check_poll
from mpu.federated.worker import SETTINGS, SOCKET, worker_folder
from mpu.io.checkpoint import atomic_write_bytes

log = logging.getLogger("mpu.federated")
REFUSED_HINT = (
    "the SuperNode could not connect or was refused. Check --server, that the server's CA is "
    "the one given with --ca, and that the server registered this client's public key "
    "(`mpu serve` registers every client-*.pub in its --certs folder)"
)
CONNECTION = "mpu"  # the SuperLink connection's name in the Flower CLI config
START_TIMEOUT = 120.0
REJOIN_PAUSE = 5.0  # seconds before a stopped or refused SuperNode is started again
NODE_UP = 30.0  # a SuperNode that ran this long had connected; its stop is not a refusal


def _flower_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["FLWR_TELEMETRY_ENABLED"] = "0"  # no calls home
    return env


def _tool(name: str) -> str:
    """A Flower console script of this Python environment (not whichever is first on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        raise ConfigError(
            f"{name} not found: install the deployment extra (pip install 'mpu[federated]')"
        )
    return found


def _start(cmd: list[str], env: dict, logfile: Path) -> subprocess.Popen:
    """A Flower process in a session of its own, with a guard that ends the whole session
    when this process dies (`_guard`)."""
    out = logfile.open("ab")
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    _guard(proc.pid)
    return proc


GUARD = """
import ctypes, os, signal, sys
root, parent = int(sys.argv[1]), int(sys.argv[2])
def tree():
    children = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
def end(*_):
    for pid in [*reversed(tree()), root]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os._exit(0)
signal.signal(signal.SIGTERM, end)
ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: told when mpu dies
if os.getppid() != parent:  # mpu died before the line above ran
    end()
while True:
    signal.pause()
"""


def _guard(root: int) -> subprocess.Popen | None:
    """A small watchdog that kills process `root` and everything below it when this process
    dies, by any signal, kill -9 included. A parent-death signal on `root` itself would reach
    only `root`, and what Flower starts below it (SuperExec, ClientApp and ServerApp processes,
    some in sessions of their own) would run on with parent 1; the guard walks the tree while
    `root` still holds it together, then kills it leaves first. Linux only (prctl, /proc)."""
    if not sys.platform.startswith("linux"):
        return None
    # its own session: a kill of mpu's process group (a terminal's, a test's) must not take
    # the guard with it before it has done its job
    return subprocess.Popen([sys.executable, "-c", GUARD, str(root), str(os.getpid())],
                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip


def _wait_for_port(address: str, proc: subprocess.Popen, logfile: Path) -> None:
    host, port = split_address(address)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MPUError(f"the SuperLink exited with code {proc.returncode}; see {logfile}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise MPUError(
        f"the SuperLink did not open {address} within {START_TIMEOUT:.0f} s; see {logfile}"
    )


def _write_toml(path: Path, obj: dict) -> None:
    import tomli_w  # Flower's own dependency

    atomic_write_bytes(path, tomli_w.dumps(obj).encode())


def _write_app(folder: Path, cfg: FederationConfig) -> Path:
    """The Flower App folder `flwr run` bundles: components are mpu's own apps, installed on
    both sides; the run config carries the federation's (non-secret) settings."""
    folder.mkdir(parents=True, exist_ok=True)
    run_config = {
        "workdir": str(cfg.workdir.resolve()),
        "rounds": cfg.rounds,
        "clients": cfg.clients,
        "round-timeout": float(cfg.round_timeout),
        "join-timeout": float(cfg.join_timeout),
        "retries": cfg.retries,
        "on-failure": cfg.on_failure,
        "direct-port": cfg.direct_port,
        "direct-certs": cfg.direct_certs,
        "direct-host": cfg.direct_host,
    }
    pyproject = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": "mpu-round",
            "version": "1.0.0",
            "description": "MPU unlearning rounds (the apps are installed with mpu)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "mpu",
                    "components": {
                        "serverapp": "mpu.federated.server_app:app",
                        "clientapp": "mpu.federated.client_app:app",
                    },
                    "config": run_config,
                }
            }
        },
    }
    _write_toml(folder / "pyproject.toml", pyproject)
    return folder


def _write_cli_config(home: Path, address: str, ca: Path | None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    connection = {"address": address}
    connection.update({"root-certificates": str(ca.resolve())} if ca else {"insecure": True})
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    _write_toml(home / "config.toml", config)


@dataclass(frozen=True)
class Security:
    """TLS and node authentication, or neither (`insecure`)."""

    certs: Path | None = None
    insecure: bool = False

    def check(self) -> CertFiles | None:
        if self.insecure:
            return None
        if self.certs is None:
            raise ConfigError(
                "TLS and node authentication are on by default: pass --certs DIR (made by "
                "`mpu certs`), or --insecure for a plain connection on a trusted network"
            )
        return CertFiles(Path(self.certs))


def _flwr(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("flwr"), *args], env=env, capture_output=True, text=True)


def serve(cfg: FederationConfig, *, address: str, security: Security,
          public_keys: list[Path] | None = None, stream=None) -> dict:  # fmt: skip
    """Run the server side of a federation to its end; returns the run's summary."""
    import json

    from mpu.server.job import Server

    Server(cfg.workdir)  # a workdir of `mpu server init`, or a clear error now
    files = security.check()
    if cfg.direct_port:  # beside the SuperLink: its address, and TLS with its certificate
        cfg = dataclasses.replace(cfg, direct_host=split_address(address)[0],
                                  direct_certs=str(files.folder.resolve()) if files else "")  # fmt: skip
    fed = cfg.workdir / FEDERATION
    home = fed / "flower"
    env = _flower_env(home)
    _write_cli_config(home, address, files.ca_cert if files else None)
    app = _write_app(fed / "app", cfg)
    host, port = split_address(address)
    # the SuperLink's state in memory: with its SQLite file, model-sized messages hit
    # "database is locked"; what must survive a restart lives in the workdir, and the keys are
    # registered again at every start
    cmd = [_tool("flower-superlink"), "--host", host, "--port", str(port),
           "--disable-runtime-dependency-installation"]  # fmt: skip
    if files:
        for f in (files.ca_cert, files.server_cert, files.server_key):
            if not f.is_file():
                raise ConfigError(f"{f}: missing (make the certificates with `mpu certs`)")
        cmd += ["--ssl-ca-certfile", str(files.ca_cert), "--ssl-certfile",
                str(files.server_cert), "--ssl-keyfile", str(files.server_key),
                "--enable-supernode-auth"]  # fmt: skip
    else:
        cmd += ["--insecure"]
    summary = fed / "summary.json"
    summary.unlink(missing_ok=True)
    link_log = fed / "superlink.log"
    link = _start(cmd, env, link_log)
    try:
        _wait_for_port(address, link, link_log)
        keys = public_keys if public_keys is not None else (
            sorted(files.folder.glob("client-*.pub")) if files else [])  # fmt: skip
        for key in keys:
            done = _flwr(["supernode", "register", str(key), CONNECTION], env)
            if done.returncode != 0 and "already" not in (done.stdout + done.stderr).lower():
                raise MPUError(f"registering {key} failed: {(done.stdout + done.stderr).strip()}")
            log.info("registered client key %s", key.name)
        log.info("SuperLink on %s (%s); waiting for %d client(s)", address,
                 "TLS, node authentication" if files else "INSECURE", cfg.clients)  # fmt: skip
        run = subprocess.Popen([_tool("flwr"), "run", str(app), CONNECTION, "--stream"], env=env,
                               stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        _guard(run.pid)
        run.wait()
        if run.returncode != 0 or not summary.is_file():
            raise MPUError(
                f"the federated run did not finish (flwr run exit {run.returncode}); the server "
                f"workdir {cfg.workdir} is intact and `mpu serve` again resumes it; "
                f"SuperLink log: {link_log}"
            )
        return json.loads(summary.read_text())
    finally:
        link.terminate()
        try:
            link.wait(timeout=20)
        except subprocess.TimeoutExpired:
            link.kill()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a SuperNode's or a test's server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(side: ClientSide, *, server: str, security: Security, ca: Path | None = None,
         key: Path | None = None, max_wait: float = 600.0, poll: float = IDLE_PULL,
         warm: bool = True) -> NoReturn:  # fmt: skip
    """Run a SuperNode with the MPU ClientApp until `mpu join` is stopped. A SuperNode that
    stops (the server restarted and forgot it) is started again; one the server refuses, or
    that cannot connect, is retried for `max_wait` seconds, then this fails with the reason.
    `poll`: seconds between an idle node's pulls (supernode.py); `warm`: keep a worker with
    the imports and data loaded for every round (worker.py), else train in Flower's
    per-message ClientApp process."""
    if not security.insecure and (ca is None or key is None):
        raise ConfigError(
            "TLS and node authentication are on by default: pass --ca (the server's CA "
            "certificate) and --key (this client's private key from `mpu certs`), or --insecure"
        )
    check_poll(poll, "--poll")
    load_side(side)
    for f in (ca, key):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"{f}: no such file")
    _tool("flower-supernode")  # Flower is installed (a clear error if not)
    side.workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(side.workdir, 0o700)
    side = dataclasses.replace(  # where the direct data path is, if the server offers one
        side, server_host=split_address(server)[0],
        ca=None if security.insecure else str(Path(ca).resolve()))  # fmt: skip
    env = _node_env(side.workdir / "flower", poll)
    node_config = _node_config(side)
    worker = _start_worker(side, env) if warm else None
    try:
        if worker is not None:
            node_config["worker"] = str(worker[1] / SOCKET)
        config_file = side.workdir / "node-config.toml"
        _write_toml(config_file, node_config)
        cmd = [sys.executable, "-m", "mpu.federated.supernode", "--superlink", server,
               "--node-config", str(config_file), "--port", str(free_port())]  # fmt: skip
        if security.insecure:
            cmd += ["--insecure"]
        else:
            cmd += ["--root-certificates", str(ca), "--auth-supernode-private-key", str(key)]
        _keep_node_running(cmd, env, server, security, ca, max_wait)
    finally:
        if worker is not None:
            _stop_group(worker[0])
            shutil.rmtree(worker[1], ignore_errors=True)


def _keep_node_running(cmd: list[str], env: dict, server: str, security: Security,
                       ca: Path | None, max_wait: float) -> NoReturn:  # fmt: skip
    """Start the SuperNode again whenever it stops, until the server refuses it or cannot be
    reached for `max_wait` seconds (then MPUError with the cause)."""
    from mpu.federated.diagnose import why_no_connection

    probe = lambda: why_no_connection(server, insecure=security.insecure, ca=ca)  # noqa: E731
    deadline = time.monotonic() + max_wait
    while True:
        started = time.monotonic()
        code, refused = _run_node(cmd, env, deadline, probe)
        now = time.monotonic()
        if not refused and now - started > NODE_UP:  # it was connected: a server that went
            deadline = now + max_wait  # away (restarted, its state lost) gets max_wait to return
        elif now + REJOIN_PAUSE > deadline:
            cause = probe()
            raise MPUError(f"could not join: {cause}" if cause else REFUSED_HINT if refused else
                           f"the SuperNode keeps stopping (exit code {code}); see its output above")  # fmt: skip
        log.warning("the SuperNode %s; starting it again in %.0f s (for at most %.0f s more)",
                    "was refused" if refused else f"stopped (exit code {code})", REJOIN_PAUSE,
                    deadline - now)  # fmt: skip
        time.sleep(REJOIN_PAUSE)


def _node_env(home: Path, poll: float) -> dict[str, str]:
    """The SuperNode's environment: Flower's home, and its polls shortened (supernode.py)."""
    home.mkdir(parents=True, exist_ok=True)
    env = _flower_env(home)
    env[POLL_ENV] = str(poll)
    # the SuperExec asks its (local) SuperNode for a ClientApp to start: Flower's own setting,
    # 1 s unless set; half the idle pull here, so `--poll 3` is Flower's stock behaviour
    env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(min(1.0, max(REPLY_CHECK, poll / 2)))
    return env


def _node_config(side: ClientSide) -> dict[str, str]:
    """The SuperNode's node config: the client's private settings, read by its ClientApp."""
    config = {"name": side.name, "workdir": str(side.workdir.resolve()), "data": side.data,
              "split": side.split, "method": side.method, "settings": " ".join(side.settings)}  # fmt: skip
    if side.retain_split:
        config["retain-split"] = side.retain_split
    config["server-host"] = side.server_host
    if side.ca:
        config["ca"] = side.ca
    return config


def _start_worker(side: ClientSide, env: dict) -> tuple[subprocess.Popen, Path]:
    """Start the warm worker (worker.py): (its process, its private folder). It loads while the
    SuperNode connects, so a failing connection is reported as soon as without it; a ClientApp
    that gets its round first waits for the worker's socket (`ask_worker`). It ends with this
    process, like the Flower children (`_start`)."""
    folder = worker_folder(side.workdir)
    config = folder / SETTINGS
    _write_toml(config, _node_config(side))
    proc = _start([sys.executable, "-m", "mpu.federated.worker", "--node-config", str(config),
                   "--folder", str(folder)], env, side.workdir / "worker.log")  # fmt: skip
    return proc, folder


def _run_node(cmd: list[str], env: dict, deadline: float, probe) -> tuple[int, bool]:
    """Run one SuperNode to its end: (exit code, whether the SuperLink refused it). Past
    `deadline` the server is probed (and again every PROBE_EVERY seconds); a cause the probe
    finds stops the node and is raised: the SuperNode itself would retry forever."""
    node = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    guard = _guard(node.pid)
    seen = {"refused": False}

    def pump() -> None:  # the SuperNode's console, passed through
        for line in node.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            seen["refused"] = seen["refused"] or b"Exit Code: 305" in line

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        code = _wait_or_diagnose(node, deadline, probe)
    finally:
        _stop_group(node)
        if guard is not None:
            guard.terminate()  # its group is gone; one guard per SuperNode start
    reader.join(timeout=5)
    return code, seen["refused"]


PROBE_EVERY = 60.0  # seconds between probes of a server the first probe found no fault with


def _wait_or_diagnose(node: subprocess.Popen, deadline: float, probe) -> int:
    """The node's exit code; past the deadline, MPUError with the cause the probe names."""
    while True:
        try:
            return node.wait(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() < deadline:
                continue
        cause = probe()
        if cause:
            raise MPUError(f"could not join: {cause}")
        deadline = time.monotonic() + PROBE_EVERY


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop a child and what it started (its own session): SuperExec, ClientApp processes."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

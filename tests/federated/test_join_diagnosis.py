"""`mpu join --max-wait` ends with the cause when the server cannot be reached: nothing
listening, a TLS server met in plain text, a certificate for another host. The SuperNode
itself only logs "Connection attempt failed" and retries forever."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time

import pytest

from mpu.federated.certs import make_certs
from mpu.federated.deploy import free_port
from mpu.federated.diagnose import why_no_connection


class _TLSServer:
    """Accepts connections and completes TLS handshakes with the given certificate."""

    def __init__(self, certs):
        self.ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ctx.load_cert_chain(str(certs.server_cert), str(certs.server_key))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        self.sock.settimeout(0.5)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(1)
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    def close(self):
        self.stop = True
        self.sock.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    return (make_certs(root / "here", hosts=["127.0.0.1", "localhost"], clients=1),
            make_certs(root / "elsewhere", hosts=["example.org"], clients=1))  # fmt: skip


@pytest.fixture(scope="module")
def servers(certs):
    here, elsewhere = _TLSServer(certs[0]), _TLSServer(certs[1])
    yield here, elsewhere
    here.close()
    elsewhere.close()


def test_the_probe_names_each_cause_and_finds_none_in_a_good_setup(certs, servers):
    here, elsewhere = servers
    closed = f"127.0.0.1:{free_port()}"
    assert "nothing listens" in why_no_connection(closed, insecure=True, ca=None)
    assert "speaks TLS" in why_no_connection(here.address, insecure=True, ca=None)
    cause = why_no_connection(elsewhere.address, insecure=False, ca=certs[1].ca_cert)
    assert "not valid for '127.0.0.1'" in cause
    cause = why_no_connection(here.address, insecure=False, ca=certs[1].ca_cert)
    assert "does not verify against --ca" in cause
    assert why_no_connection(here.address, insecure=False, ca=certs[0].ca_cert) is None


@pytest.mark.slow
@pytest.mark.parametrize("case", ["nothing listening", "plain text to TLS", "certificate host"])
def test_join_returns_within_its_wait_naming_the_cause(tofu_world, certs, servers, tmp_path, case):
    data, _ = tofu_world
    here, elsewhere = servers
    if case == "nothing listening":
        server, security, expect = f"127.0.0.1:{free_port()}", ["--insecure"], "nothing listens"
    elif case == "plain text to TLS":
        server, security, expect = here.address, ["--insecure"], "speaks TLS"
    else:
        server, expect = elsewhere.address, "not valid for '127.0.0.1'"
        security = ["--ca", str(certs[1].ca_cert), "--key", str(certs[1].client_key(1))]
    cmd = [sys.executable, "-m", "mpu.cli", "join", "--server", server, "--name", "alice",
           "--workdir", str(tmp_path / "w"), "--data", str(data), "--split", "forget01",
           "--max-wait", "20", *security]  # fmt: skip
    start = time.monotonic()
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert run.returncode == 2, run.stderr[-2000:]
    assert expect in run.stderr and "Traceback" not in run.stderr

"""The direct data path: a round's tensors over one HTTPS stream, Flower carrying the rest.

Through Flower, every tensor is cut into Flower objects, stored in the SuperLink, pulled by the
SuperNode and handed to the ClientApp; on SmolLM2 (1.9 GiB a round at m = 2) that path moved
about 39 MiB/s and made a round 2.8× the in-process one (benchmarks/RESULTS.md). With
`mpu serve --direct-port P` the ServerApp also listens on P — TLS with the server's certificate
(the one the SuperLink uses), plain only with `--insecure` — and a round's message carries the
manifest, the small files and the list of tensors, but not the tensors. The client fetches them
in one GET and sends its deltas' tensors in one PUT, then replies through Flower with their
list. Each request names a one-time token that travelled in the round's Flower message (to the
one authenticated node the round is for), so no one else can read the copies or write an
update. What the files must be is unchanged: each file is checked against the SHA-256 that
came through Flower (`transport.write_folders`), so a stream that is cut, reordered or
tampered with is refused like a bad Flower message.
"""

from __future__ import annotations

import hmac
import http.client
import http.server
import json
import secrets
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from mpu.errors import UpdateRejectedError

CHUNK = 4 * 2**20  # bytes per socket write or read


@dataclass
class _Slot:
    """One attempt's exchange: the tensors offered, the bound on what may come back, the upload."""

    offered: list[bytes | memoryview]
    limit: int
    received: bytearray | None = None


def listing(tensors: dict) -> list[list]:
    """[[key, size], …] in stream order: what a Flower message says the stream holds."""
    return [[k, len(v)] for k, v in tensors.items()]


def split_stream(body: bytes | bytearray, listed: object, where: str) -> dict[str, memoryview]:
    """The stream cut into its tensors by the list that came through Flower; a list that does
    not describe the stream exactly is refused."""
    if not isinstance(listed, list) or not all(
        isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], int)
        and e[1] >= 0 for e in listed
    ):  # fmt: skip
        raise UpdateRejectedError(f"{where}: malformed tensor list for the direct stream")
    if sum(size for _, size in listed) != len(body):
        raise UpdateRejectedError(
            f"{where}: the direct stream holds {len(body)} bytes, its list declares "
            f"{sum(size for _, size in listed)}"
        )
    view, at, out = memoryview(body), 0, {}
    for key, size in listed:
        out[key] = view[at : at + size]
        at += size
    return out


class DirectServer:
    """The ServerApp's side: a threaded HTTP(S) server holding one slot per open attempt."""

    def __init__(self, port: int, *, cert: Path | None = None, key: Path | None = None,
                 host: str = "0.0.0.0"):  # fmt: skip
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert), str(key))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def offer(self, tensors: dict, limit: int) -> str:
        """Open an attempt: `tensors` to be fetched, at most `limit` bytes to be sent back;
        returns its token (secret between the server and the round's client)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._slots[token] = _Slot(list(tensors.values()), limit)
        return token

    def take(self, token: str, listed: object, where: str) -> dict[str, memoryview]:
        """The tensors the client sent for this attempt (closing it), cut by its list."""
        with self._lock:
            slot = self._slots.pop(token, None)
        if slot is None or slot.received is None:
            raise UpdateRejectedError(f"{where}: the client replied without sending its updates "
                                      "over the direct path")  # fmt: skip
        return split_stream(slot.received, listed, where)

    def withdraw(self, token: str) -> None:
        with self._lock:
            self._slots.pop(token, None)

    def slot(self, token: str) -> _Slot | None:
        """The open attempt of `token`, compared in constant time."""
        with self._lock:
            found = [s for t, s in self._slots.items() if hmac.compare_digest(t, token)]
        return found[0] if found else None


def _handler(server: DirectServer):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # no access log: the path holds the token
            pass

        def _slot(self) -> _Slot | None:
            token = self.path.rpartition("/")[2]
            slot = server.slot(token)
            if slot is None:
                self._answer(403, "unknown or closed token")
            return slot

        def _answer(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if (slot := self._slot()) is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(sum(len(t) for t in slot.offered)))
            self.end_headers()
            for tensor in slot.offered:
                view = memoryview(tensor)
                for at in range(0, len(view), CHUNK):
                    self.wfile.write(view[at : at + CHUNK])

        def do_PUT(self) -> None:
            if (slot := self._slot()) is None:
                return
            try:
                size = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._answer(411, "Content-Length required")
            if not 0 <= size <= slot.limit:
                self.close_connection = True
                return self._answer(413, f"{size} bytes: more than the model's {slot.limit}")
            body = _read_exactly(self.rfile, size)
            if body is None:
                return self._answer(400, "the upload ended early")
            slot.received = body
            self._answer(200, "stored")

    return Handler


def _read_exactly(stream, size: int) -> bytearray | None:
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = stream.readinto(view[got : got + CHUNK])
        if not n:
            return None
        got += n
    return buf


@dataclass(frozen=True)
class DirectPath:
    """The client's view of the server's direct path: where it is and how to trust it."""

    host: str
    port: int
    ca: Path | None  # None: plain HTTP (`--insecure` on both sides)

    def _connect(self) -> http.client.HTTPConnection:
        if self.ca is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=600)
        ctx = ssl.create_default_context(cafile=str(self.ca))
        return http.client.HTTPSConnection(self.host, self.port, timeout=600, context=ctx)

    def fetch(self, token: str, listed: object, where: str) -> dict[str, memoryview]:
        """The round's tensors, cut by the list that came through Flower."""
        conn = self._connect()
        try:
            conn.request("GET", f"/round/{token}")
            resp = conn.getresponse()
            if resp.status != 200:
                raise UpdateRejectedError(f"{where}: direct path answered {resp.status} "
                                          f"{resp.read(200).decode(errors='replace')}")  # fmt: skip
            body = _read_exactly(resp, int(resp.headers.get("Content-Length", "0")))
        except OSError as exc:
            raise UpdateRejectedError(
                f"{where}: direct path {self.host}:{self.port}: {exc}"
            ) from None
        finally:
            conn.close()
        if body is None:
            raise UpdateRejectedError(f"{where}: the direct stream ended early")
        return split_stream(body, listed, where)

    def send(self, token: str, tensors: dict, where: str) -> str:
        """Upload `tensors` as one stream; returns their list (JSON) for the Flower reply."""
        conn = self._connect()
        try:
            conn.putrequest("PUT", f"/round/{token}")
            conn.putheader("Content-Length", str(sum(len(t) for t in tensors.values())))
            conn.endheaders()
            for tensor in tensors.values():
                view = memoryview(tensor)
                for at in range(0, len(view), CHUNK):
                    conn.send(view[at : at + CHUNK])
            resp = conn.getresponse()
            text = resp.read(200).decode(errors="replace")
        except OSError as exc:
            raise UpdateRejectedError(
                f"{where}: direct path {self.host}:{self.port}: {exc}"
            ) from None
        finally:
            conn.close()
        if resp.status != 200:
            raise UpdateRejectedError(
                f"{where}: direct path refused the upload: {resp.status} {text}"
            )
        return json.dumps(listing(tensors))

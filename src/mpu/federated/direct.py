"""The direct data path: a round's tensors over one HTTPS stream, Flower carrying the rest.

Through Flower, every tensor is cut into Flower objects, stored in the SuperLink, pulled by the
SuperNode and handed to the ClientApp; on SmolLM2 (1.9 GiB a round at m = 2) that path moved
about 39 MiB/s and made a round 2.5–2.8× the in-process one (benchmarks/RESULTS.md). With
`mpu serve --direct-port P` the ServerApp also listens on P — TLS with the server's certificate
(the one the SuperLink uses), plain only with `--insecure` — and a round's message carries the
manifest (every file's SHA-256) and the small files, but not the tensors.

The client fetches the tensors in one GET and writes each file as its bytes arrive; it sends
its deltas in one PUT: the reply's manifest and small files first, then the tensors, which the
server writes into the round's staging inbox as they arrive. Neither side holds a model's
worth of tensors in memory. The client then replies through Flower with the same manifest,
which must equal what the stream announced. Each request names a one-time token that
travelled in the round's Flower message (to the one authenticated node the round is for), so
no one else can read the copies or write an update. Every file is checked against its SHA-256
as it is written (`transport.write_folders`), so a stream that is cut, reordered or tampered
with is refused like a bad Flower message, and the file is not kept.
"""

from __future__ import annotations

import base64
import hmac
import http.client
import http.server
import json
import logging
import secrets
import shutil
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mpu.errors import UpdateRejectedError
from mpu.federated.transport import CHUNK, Packed, declared_bytes, stream_order, write_folders

log = logging.getLogger("mpu.federated")

MAX_META_BYTES = 64 * 2**20  # a reply's manifest and small files (headers, receipts)


def meta_bytes(packed: Packed) -> bytes:
    """A reply's manifest and small files, as the PUT body's prefix (length first)."""
    blobs = {k: base64.b64encode(v).decode() for k, v in packed.blobs.items()}
    body = json.dumps({"manifest": packed.manifest, "blobs": blobs}).encode()
    return struct.pack("<Q", len(body)) + body


def read_meta(stream, where: str) -> Packed:
    """The prefix `meta_bytes` wrote, read back from a stream and checked for shape."""
    raw = stream.read(8)
    (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (None,)
    if n is None or n > MAX_META_BYTES:
        raise UpdateRejectedError(f"{where}: the upload does not start with a manifest")
    try:
        obj = json.loads(stream.read(n))
        blobs = {k: base64.b64decode(v, validate=True) for k, v in obj["blobs"].items()}
        manifest = obj["manifest"]
    except (KeyError, TypeError, ValueError):
        raise UpdateRejectedError(f"{where}: malformed manifest in the upload") from None
    if not isinstance(manifest, list):
        raise UpdateRejectedError(f"{where}: malformed manifest in the upload")
    return Packed(manifest, blobs, {})


@dataclass
class _Slot:
    """One attempt's exchange: what is offered, where an upload goes, what came."""

    offered: Packed
    limit: int
    staging: Path
    received: tuple[Packed, list[Path]] | None = None
    error: str = ""


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

    def offer(self, packed: Packed, limit: int, staging: Path) -> str:
        """Open an attempt: `packed`'s tensors to be fetched, at most `limit` bytes of files
        to be written into `staging` by the upload; returns its token (a secret between the
        server and the round's client)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._slots[token] = _Slot(packed, limit, staging)
        return token

    def take(self, token: str, announced: Packed, where: str) -> list[Path]:
        """The folders the upload wrote (closing the attempt); `announced`: the manifest and
        small files of the client's Flower reply, which must be what the upload carried."""
        with self._lock:
            slot = self._slots.pop(token, None)
        if slot is None or slot.received is None:
            why = f": {slot.error}" if slot is not None and slot.error else ""
            raise UpdateRejectedError(f"{where}: no update arrived over the direct path{why}")
        streamed, folders = slot.received
        if (streamed.manifest, streamed.blobs) != (announced.manifest, announced.blobs):
            shutil.rmtree(slot.staging, ignore_errors=True)
            raise UpdateRejectedError(f"{where}: the reply's manifest differs from the upload's")
        return folders

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
        timeout = 600  # seconds a stalled connection may keep its thread

        def log_message(self, *args) -> None:  # no access log: the path holds the token
            pass

        def _slot(self) -> _Slot | None:
            slot = server.slot(self.path.rpartition("/")[2])
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
            tensors = [slot.offered.tensors[k] for k in stream_order(slot.offered)]
            self.send_response(200)
            self.send_header("Content-Length", str(sum(len(t) for t in tensors)))
            self.end_headers()
            for tensor in tensors:
                view = memoryview(tensor)
                for at in range(0, len(view), CHUNK):
                    self.wfile.write(view[at : at + CHUNK])

        def do_PUT(self) -> None:
            if (slot := self._slot()) is None:
                return
            self.close_connection = True  # one upload per connection
            try:
                size = int(self.headers.get("Content-Length", ""))
            except ValueError:
                return self._answer(411, "Content-Length required")
            if not 0 <= size <= slot.limit + MAX_META_BYTES:  # refused unread
                return self._answer(413, f"{size} bytes: more than the model's {slot.limit}")
            body = _Body(self.rfile, size)
            where, started = "the direct upload", time.perf_counter()
            try:
                meta = read_meta(body, where)
                shutil.rmtree(slot.staging, ignore_errors=True)
                folders = write_folders(meta, slot.staging, where, max_bytes=slot.limit,
                                        stream=body)  # fmt: skip
            except (UpdateRejectedError, OSError) as exc:  # refused, cut off or stalled
                shutil.rmtree(slot.staging, ignore_errors=True)
                slot.error = str(exc)
                if not isinstance(exc, OSError):
                    body.drain()  # so the client reads the reason, not a broken connection
                return self._answer(400, str(exc))
            slot.received = (meta, folders)
            log.info("direct path: %.0f MiB of updates received and written in %.1f s",
                     declared_bytes(meta, where) / 2**20, time.perf_counter() - started)  # fmt: skip
            self._answer(200, "stored")

    return Handler


class _Body:
    """A request body of `size` bytes: reads never go past its end."""

    def __init__(self, stream, size: int):
        self.stream, self.left = stream, size

    def read(self, n: int) -> bytes:
        data = self.stream.read(min(n, self.left))
        self.left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer)[: self.left]
        n = self.stream.readinto(view) if len(view) else 0
        self.left -= n
        return n

    def drain(self) -> None:
        """Read and drop what is left (at most a model's size: bounded before reading)."""
        scratch = bytearray(min(CHUNK, self.left))
        while self.left and self.readinto(scratch):
            pass


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

    def _failed(self, where: str, exc: OSError, conn=None) -> UpdateRejectedError:
        """The error to raise; the server's own answer when one can still be read."""
        try:
            resp = conn.getresponse() if conn is not None else None
            if resp is not None and resp.status != 200:
                text = resp.read(500).decode(errors="replace")
                return UpdateRejectedError(f"{where}: the server refused the upload: {text}")
        except (OSError, http.client.HTTPException):
            pass
        return UpdateRejectedError(f"{where}: direct path {self.host}:{self.port}: {exc}")

    def fetch(self, token: str, meta: Packed, out_dir: Path, where: str) -> list[Path]:
        """Write the round's folders (`meta`: their manifest and small files, from Flower)
        with the tensors streamed from the server, each file checked as it is written."""
        conn = self._connect()
        try:
            conn.request("GET", f"/round/{token}")
            resp = conn.getresponse()
            if resp.status != 200:
                text = resp.read(200).decode(errors="replace")
                raise UpdateRejectedError(f"{where}: direct path answered {resp.status} {text}")
            return write_folders(meta, out_dir, where, stream=resp)
        except OSError as exc:
            raise self._failed(where, exc) from None
        finally:
            conn.close()

    def send(self, token: str, reply: Packed, where: str) -> None:
        """Upload `reply` (made with `pack_folders`): its manifest and small files, then its
        tensors in stream order; returns once the server has written and checked them."""
        prefix = meta_bytes(reply)
        tensors = [reply.tensors[k] for k in stream_order(reply)]
        conn = self._connect()
        try:
            conn.putrequest("PUT", f"/round/{token}")
            conn.putheader("Content-Length", str(len(prefix) + sum(len(t) for t in tensors)))
            conn.endheaders()
            conn.send(prefix)
            for tensor in tensors:
                view = memoryview(tensor)
                for at in range(0, len(view), CHUNK):
                    conn.send(view[at : at + CHUNK])
            resp = conn.getresponse()
            text = resp.read(500).decode(errors="replace")
        except OSError as exc:  # the server may have answered before closing: say why
            raise self._failed(where, exc, conn) from None
        finally:
            conn.close()
        if resp.status != 200:
            raise UpdateRejectedError(f"{where}: the server refused the upload: {text}")

"""Why a SuperNode cannot reach its server, found by probing the address the way it connects.

Flower's SuperNode retries forever and logs only "Connection attempt failed", whatever the
cause. `mpu join --max-wait` probes the server itself once the wait is up: a TCP connection
(nothing listening?), then a TLS handshake as this client would make it (plain text against a
TLS server, a TLS client against a plain server, a certificate for another host or from
another CA). A definite misconfiguration is the error `mpu join` stops with; a server that
answers correctly is left to the SuperNode (it may be connected and working).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

TIMEOUT = 5.0


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (IPv6 hosts in brackets) as (host, port); anything else is a ConfigError."""
    from mpu.errors import ConfigError

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"address {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def why_no_connection(address: str, *, insecure: bool, ca: Path | None) -> str | None:
    """The cause a SuperNode at `address` cannot connect, or None when the probe finds none."""
    host, port = split_address(address)
    try:
        raw = socket.create_connection((host, port), timeout=TIMEOUT)
    except ConnectionRefusedError:
        return f"nothing listens at {address} (connection refused): is `mpu serve` running there?"
    except OSError as exc:
        return f"cannot reach {address} ({exc.strerror or exc}): check the host and the port"
    with raw:
        return _insecure_client(raw, address) if insecure else _tls_client(raw, address, host, ca)


def _insecure_client(raw: socket.socket, address: str) -> str | None:
    """A plain-text client: the server must not be a TLS server."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with ctx.wrap_socket(raw, server_hostname=split_address(address)[0]):
            return (f"the server at {address} speaks TLS and this client connects in plain "
                    "text: pass --ca and --key (from `mpu certs`) instead of --insecure")  # fmt: skip
    except (ssl.SSLError, OSError):
        return None  # not a TLS server: the plain connection is the right one


def _tls_client(raw: socket.socket, address: str, host: str, ca: Path | None) -> str | None:
    """A TLS client: the server must speak TLS with a certificate for `host` from `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
    try:
        with ctx.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        if "mismatch" in str(exc.verify_message or exc):
            return (f"the server's certificate is not valid for {host!r}: connect by a name "
                    "it was made for, or make the certificates with `mpu certs --host "
                    f"{host}`")  # fmt: skip
        return (f"the server's certificate does not verify against --ca ({exc.verify_message}): "
                "use the ca.crt of the server's `mpu certs` folder")  # fmt: skip
    except (ssl.SSLError, ConnectionResetError, OSError):
        return (f"the server at {address} does not speak TLS (is it running --insecure?): "
                "connect with --insecure, or serve with --certs")  # fmt: skip

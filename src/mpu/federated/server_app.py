"""The model owner's Flower `ServerApp`: the MPU round loop with Flower as the transport.

The loop is `mpu.server.rounds.run_rounds`, the one every other path uses; this module only
supplies its client: Pre-Process packs the round's m published copies into one message for the
client whose request the round serves (`ledger.py` says which), Post-Process writes the m
deltas that come back into the round's inbox and hands them to `Server.aggregate` — the same
validation, inversion and harmonic aggregation as `mpu server aggregate`.

Failure policy (a client's round is all m deltas or nothing):
  * no reply within `round-timeout` seconds, an error reply, or a reply refused by validation
    (malformed, oversized, wrong round or copy, forged ticket, NaN/Inf) is a failed attempt;
    the client is told why and the round's copies are sent again, up to `retries` times;
  * then `on-failure = "stop"` (default) ends the run with the reason and the workdir intact
    (`mpu serve` again resumes at that round); `on-failure = "drop"` drops the client's
    request (what it already applied stays applied) and the round serves the next client.
A server killed at any point resumes from its workdir: the round's copies are regenerated
byte for byte by the server (not re-sent when the client's deltas had already arrived), and
deltas received before the crash are aggregated without asking the client again.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mpu.errors import ConfigError, MPUError, UpdateRejectedError
from mpu.federated.direct import DirectServer
from mpu.federated.ledger import Ledger
from mpu.federated.transport import (
    declared_bytes,
    from_records,
    pack_folders,
    to_records,
    write_folders,
)
from mpu.io.checkpoint import atomic_write_json
from mpu.server.rounds import RoundContext, outbox_of, run_rounds

log = logging.getLogger("mpu.federated")
FEDERATION = "federation"  # W/federation: outboxes, inboxes, the ledger, the Flower home
HEADER_SLACK = 2**20  # bytes a delta may carry beyond its tensors (header, receipt)


def inbox_of(folder: Path, round_: int) -> Path:
    """Where a round's received deltas are kept (beside its outbox), all m or none."""
    return outbox_of(folder, round_).parent / "inbox"


class ClientFailed(MPUError):
    """A client's round failed `retries + 1` times; the message says why."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"client {name!r}: {reason}")
        self.name, self.reason = name, reason


@dataclass(frozen=True)
class FederationConfig:
    """The run's settings (Flower run config keys in brackets)."""

    workdir: Path  # [workdir] the server workdir of `mpu server init`
    rounds: int = 1  # [rounds] rounds per client request
    clients: int = 1  # [clients] client requests to serve (nodes to wait for)
    round_timeout: float = 3600.0  # [round-timeout] seconds for one client round
    join_timeout: float = 600.0  # [join-timeout] seconds to wait for the clients to connect
    retries: int = 1  # [retries] extra attempts of a failed client round
    on_failure: str = "stop"  # [on-failure] "stop" or "drop"
    direct_port: int = 0  # [direct-port] the direct data path's port (direct.py); 0: off
    direct_certs: str = ""  # [direct-certs] folder with server.crt/.key; "": plain HTTP
    direct_host: str = "0.0.0.0"  # [direct-host] the address it listens on (the SuperLink's)

    @classmethod
    def from_run_config(cls, rc) -> FederationConfig:
        if "workdir" not in rc or not str(rc["workdir"]):
            raise ConfigError("the run config needs workdir (the server workdir)")
        cfg = cls(
            Path(str(rc["workdir"])),
            int(rc.get("rounds", 1)),
            int(rc.get("clients", 1)),
            float(rc.get("round-timeout", 3600.0)),
            float(rc.get("join-timeout", 600.0)),
            int(rc.get("retries", 1)),
            str(rc.get("on-failure", "stop")),
            int(rc.get("direct-port", 0)),
            str(rc.get("direct-certs", "")),
            str(rc.get("direct-host", "0.0.0.0")),
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        """Every setting in range, before anything starts (`mpu serve` calls it first)."""
        from mpu.config import check_number

        if self.on_failure not in ("stop", "drop"):
            raise ConfigError(f"--on-failure must be 'stop' or 'drop', got {self.on_failure!r}")
        for name, value, low in (("--rounds", self.rounds, 1), ("--clients", self.clients, 1),
                                 ("--retries", self.retries, 0),
                                 ("--direct-port", self.direct_port, 0)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} {value}: must be an integer ≥ {low}")
        for name, value in (("--round-timeout", self.round_timeout),
                            ("--join-timeout", self.join_timeout)):  # fmt: skip
            check_number("mpu serve", name, value, low=0, low_open=True, allow_none=False)


def _message(content: dict, node: int, kind: str, config: dict):
    from flwr.app import ConfigRecord, Message, RecordDict

    records = RecordDict({**content, "mpu": ConfigRecord(config)})
    return Message(records, dst_node_id=node, message_type=kind)


POLL_FIRST, POLL_MAX = 0.05, 1.0  # seconds between pulls: the first, and the cap


def exchange(grid, messages: list, timeout: float) -> list:
    """Push `messages` and pull their replies until every one came or `timeout` passed.

    Flower's `Grid.send_and_receive` sleeps 3 s between pulls, a fixed cost on every exchange
    (a name query, each round); here the pause starts at 50 ms and doubles up to 1 s, so a
    reply is read within a second of its arrival on the longest rounds and at once on short
    ones."""
    waiting = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list = []
    pause = POLL_FIRST
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(2 * pause, POLL_MAX)
    return replies


def _wait_for_nodes(grid, n: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise ConfigError(
                f"{len(nodes)} of {n} clients connected within {timeout:.0f} s; is every "
                "`mpu join` running, with a registered key?"
            )
        time.sleep(0.5)


def _names(grid, nodes: list[int], timeout: float) -> dict[str, int]:
    """Ask every node for its client name; two nodes with one name are refused."""
    replies = exchange(grid, [_message({}, n, "query", {"ask": "name"}) for n in nodes], timeout)
    names: dict[str, int] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise ConfigError(f"node {node} did not say its name: {reply.error.reason}")
        name = str(reply.content["mpu"]["name"])
        if name in names:
            raise ConfigError(
                f"two clients are named {name!r}; give each `mpu join` its own --name"
            )
        names[name] = node
    if len(names) != len(nodes):
        raise ConfigError(
            f"only {len(names)} of {len(nodes)} clients answered within {timeout:.0f} s"
        )
    return names


def _delta_limit(server) -> int:
    """Bytes one copy's reply may declare: the model's tensors in fp32 plus a header."""
    theta = server.theta()
    return sum(4 * math.prod(theta.spec(n).shape) for n in theta.names()) + HEADER_SLACK


def _weights_hashes(copies: list[Path]) -> dict[Path, str]:
    """The SHA-256 of each copy's weight files, from the tickets the server wrote at publication
    (hashed as they were written, so packing the copies does not hash them again)."""
    from mpu.io.delta import read_ticket

    return {Path(c) / name: sha for c in copies
            for name, sha in read_ticket(c).weights_sha256.items()}  # fmt: skip


class FederatedClient:
    """`run_rounds`' client: sends the round to its owner over the Grid, returns delta paths."""

    def __init__(self, grid, server, cfg: FederationConfig, ledger: Ledger, names: dict[str, int],
                 direct: DirectServer | None = None):  # fmt: skip
        self.grid, self.server, self.cfg = grid, server, cfg
        self.ledger, self.names, self.direct = ledger, names, direct
        self.folder = cfg.workdir / FEDERATION
        self.bytes_sent = self.bytes_received = 0
        self.note = ""  # why the previous attempt was refused, told to the client

    def __call__(self, ctx: RoundContext) -> list[Path]:
        name = self.ledger.owner(ctx.round)
        assert name is not None  # the caller stops when every request is served
        self.ledger.assign(self.folder, ctx.round, name)
        inbox = inbox_of(self.folder, ctx.round)
        received = sorted(inbox.glob("*/delta.safetensors"))
        if len(received) == len(ctx.copies):  # arrived before a restart: not asked again
            log.info("round %d: using the %d updates received before the restart", ctx.round,
                     len(received))  # fmt: skip
            return received
        shutil.rmtree(inbox, ignore_errors=True)
        return self._attempt(ctx, name, inbox)

    def _attempt(self, ctx: RoundContext, name: str, inbox: Path) -> list[Path]:
        """Send the round, write the reply into the inbox; anything wrong is an
        `UpdateRejectedError` (a failed attempt)."""
        packed = pack_folders(ctx.copies, known_sha256=_weights_hashes(ctx.copies),
                              views=self.direct is not None)  # fmt: skip
        limit = len(ctx.copies) * _delta_limit(self.server)
        config = {
            "round": ctx.round,
            "first-round": self.ledger.first_round_of(name),
            "copies": len(ctx.copies),
            "previous-attempt-refused": self.note,
        }
        self.bytes_sent += packed.payload_bytes
        staging = inbox.with_name("inbox.partial")
        shutil.rmtree(staging, ignore_errors=True)
        where = f"round {ctx.round} reply of client {name!r}"
        token = self._offer(packed, limit, staging, config)
        try:
            reply = self._exchange(name, packed if token is None else packed.without_tensors(),
                                   config, where)  # fmt: skip
            if token is None:
                folders = write_folders(reply, staging, where, max_bytes=limit)
            else:
                folders = self.direct.take(token, reply, where)
        finally:
            if token is not None:
                self.direct.withdraw(token)
        self.bytes_received += declared_bytes(reply, where) if token else reply.payload_bytes
        copy_names = sorted(p.name for p in ctx.copies)
        if sorted(f.name for f in folders) != copy_names:
            shutil.rmtree(staging)
            raise UpdateRejectedError(f"{where}: updates for {sorted(f.name for f in folders)}, "
                                      f"expected one for each of {copy_names}")  # fmt: skip
        staging.rename(inbox)  # all m or nothing
        return sorted(inbox.glob("*/delta.safetensors"))

    def _offer(self, packed, limit: int, staging: Path, config: dict) -> str | None:
        """With the direct path on, offer the tensors there and name the attempt in `config`."""
        if self.direct is None:
            return None
        token = self.direct.offer(packed, limit, staging)
        config.update({"direct-port": self.direct.port, "direct-token": token})
        return token

    def _exchange(self, name: str, packed, config: dict, where: str):
        """Send the round's message; the reply's folders as it announced them."""
        message = _message(to_records(packed), self.names[name], "train", config)
        replies = exchange(self.grid, [message], self.cfg.round_timeout)
        if not replies:
            raise UpdateRejectedError(f"no reply within {self.cfg.round_timeout:.0f} s")
        reply = replies[0]
        if reply.has_error():
            raise UpdateRejectedError(f"the client failed: {reply.error.reason}")
        return from_records(reply.content, where)


def serve(grid, cfg: FederationConfig, *, progress: bool = False) -> dict:
    """Serve every client's request (module docstring); returns a summary of the run."""
    from mpu.server.job import Server

    server = Server(cfg.workdir)
    direct = _direct_server(cfg)  # a port in use fails now, before any client waits
    try:
        nodes = _wait_for_nodes(grid, cfg.clients, cfg.join_timeout)
        names = _names(grid, nodes, cfg.join_timeout)
        ledger = Ledger.open(cfg.workdir / FEDERATION, list(names), cfg.rounds, server.round)
        client = FederatedClient(grid, server, cfg, ledger, names, direct)
        return _serve_requests(cfg, server, ledger, client, progress)
    finally:
        if direct is not None:
            direct.close()


def _direct_server(cfg: FederationConfig) -> DirectServer | None:
    """The direct data path's listener (direct.py), when `direct-port` asks for one."""
    if not cfg.direct_port:
        return None
    certs = Path(cfg.direct_certs) if cfg.direct_certs else None
    direct = DirectServer(cfg.direct_port, cert=certs / "server.crt" if certs else None,
                          key=certs / "server.key" if certs else None, host=cfg.direct_host)  # fmt: skip
    log.info("direct data path on %s:%d (%s)", cfg.direct_host, direct.port,
             "TLS" if certs else "plain HTTP")  # fmt: skip
    return direct


def _serve_requests(cfg: FederationConfig, server, ledger: Ledger, client: FederatedClient,
                    progress: bool) -> dict:  # fmt: skip
    """Round after round until every request is served or dropped; the run's summary."""
    folder = cfg.workdir / FEDERATION
    started = time.perf_counter()
    failures, round_seconds = 0, []
    while (owner := ledger.owner(server.round)) is not None:
        try:  # one round at a time: the round's owner may change when a request is dropped
            begun = time.perf_counter()
            run_rounds(server, server.round, client, folder, progress=progress)
            round_seconds.append(time.perf_counter() - begun)
            failures, client.note = 0, ""
            continue
        except UpdateRejectedError as exc:  # transport or aggregation: the deltas are discarded
            shutil.rmtree(inbox_of(folder, server.round), ignore_errors=True)
            failures, client.note = failures + 1, str(exc)
            log.warning("round %d, client %s, attempt %d refused: %s", server.round, owner,
                        failures, exc)  # fmt: skip
        if failures <= cfg.retries:
            continue
        if cfg.on_failure == "stop":
            raise ClientFailed(owner, client.note)
        log.warning("dropping the request of client %s: %s", owner, client.note)
        ledger.drop(folder, owner, client.note, server.round)
        failures, client.note = 0, ""
    summary = {
        "rounds": server.round - 1,
        "order": ledger.order,
        "dropped": ledger.dropped,
        "bytes_sent": client.bytes_sent,
        "bytes_received": client.bytes_received,
        "seconds": time.perf_counter() - started,
        "round_seconds": round_seconds,  # each served round's wall time (its last attempt)
    }
    atomic_write_json(folder / "summary.json", summary)
    log.info("federation done: %s", json.dumps(summary))
    return summary


def _log_to_console() -> None:
    """mpu's INFO lines on the ServerApp's console (Flower streams it to `mpu serve`), without
    lowering the level of every other library's logger."""
    lg = logging.getLogger("mpu")
    if not any(getattr(h, "_mpu_console", False) for h in lg.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._mpu_console = True
        lg.addHandler(handler)
    if lg.level == logging.NOTSET or lg.level > logging.INFO:
        lg.setLevel(logging.INFO)


def server_app(cfg: FederationConfig | None = None):
    """The ServerApp; without `cfg` it reads the run config (`mpu serve` / `flwr run`)."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        _log_to_console()
        serve(grid, cfg or FederationConfig.from_run_config(context.run_config))

    return app


app = server_app()

"""The data owner's Flower `ClientApp`: unlearn every copy of a round, send back only deltas.

The client's settings never leave its machine: they come from the SuperNode's node config,
which `mpu join` fills from its command line (in a simulation, from the run config's
per-client table):

  name       the client's name; requests are applied in name order (ledger.py)
  workdir    where the copies, unlearned models, deltas and receipts are kept
  data       data folder (`mpu data make …`); split (default forget10); retain-split
  method     a built-in method (docs/methods.md); settings: "key=value key=value"

For each round the client writes the m copies it received (byte-identical to the published
folders: transport.py checks every file's SHA-256), runs `mpu.client.unlearn.unlearn_copy` on
each — what `mpu client unlearn` runs — with the copy of the client's first round in the same
folder as the reference and the server round as the data-order seed, and replies with the m
`delta.safetensors` and their signed receipts. Nothing else is sent: not the data, not the
unlearned model, not the settings.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from mpu.errors import ConfigError
from mpu.federated.direct import DirectPath
from mpu.federated.transport import from_records, pack_folders, to_records, write_folders

log = logging.getLogger("mpu.federated")


@dataclass(frozen=True)
class ClientSide:
    """One client's private settings (see the module docstring)."""

    name: str
    workdir: Path
    data: str
    split: str = "forget10"
    retain_split: str | None = None
    method: str = "NPO"
    settings: tuple[str, ...] = ()
    worker: str | None = None  # the socket of `mpu join`'s warm worker (worker.py), if any
    server_host: str = "127.0.0.1"  # the server's host, for the direct data path (direct.py)
    ca: str | None = None  # the CA that signed the server's certificate; None: plain HTTP

    @classmethod
    def from_mapping(cls, m) -> ClientSide:
        missing = [k for k in ("name", "workdir", "data") if not str(m.get(k, ""))]
        if missing:
            raise ConfigError(f"the client's node config lacks {missing} (set by `mpu join`)")
        return cls(
            name=str(m["name"]),
            workdir=Path(str(m["workdir"])),
            data=str(m["data"]),
            split=str(m.get("split", "forget10")),
            retain_split=str(m["retain-split"]) if str(m.get("retain-split", "")) else None,
            method=str(m.get("method", "NPO")),
            settings=tuple(shlex.split(str(m.get("settings", "")))),
            worker=str(m["worker"]) if str(m.get("worker", "")) else None,
            server_host=str(m.get("server-host", "")) or "127.0.0.1",
            ca=str(m["ca"]) if str(m.get("ca", "")) else None,
        )

    @classmethod
    def of(cls, context, table: list[ClientSide] | None = None) -> ClientSide:
        """From the node config (`mpu join`); in a simulation, entry `partition-id` of the
        table the app was made with."""
        node = context.node_config
        if table is not None and "partition-id" in node:
            return table[int(node["partition-id"])]
        if "name" in node:
            return cls.from_mapping(node)
        raise ConfigError("the client's node config lacks name (set by `mpu join`)")


def load_side(side: ClientSide):
    """The client's training config and data; a bad method, setting or data folder fails
    here (`mpu join` calls it before joining)."""
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.unlearn import load_client_data
    from mpu.config import load_config

    cfg = load_config(ClientTrainConfig, overrides=[f"method={side.method}", *side.settings])
    return cfg, load_client_data(side.data, side.split, cfg, retain_split=side.retain_split)


def unlearn_round(
    side: ClientSide, round_: int, first_round: int, copies: list[Path], loaded=None
) -> list[Path]:
    """Unlearn each copy; returns one folder per copy holding delta.safetensors + receipt.json.
    `loaded`: `load_side(side)`'s result, when the caller keeps it (the warm worker)."""
    from mpu.client.unlearn import unlearn_copy

    cfg, data = loaded if loaded is not None else load_side(side)
    outs = []
    for copy in copies:
        reference = None
        if round_ > first_round:
            reference = side.workdir / f"round{first_round}" / "copies" / copy.name
            if not (reference / "mpu-ticket.json").is_file():
                raise ConfigError(
                    f"{reference}: the reference copy of round {first_round} is gone; "
                    "the client's workdir must be kept for the whole request"
                )
        out = side.workdir / f"round{round_}" / f"client-{copy.name}"
        shutil.rmtree(out, ignore_errors=True)  # a retried round is computed again
        unlearn_copy(copy, data, cfg, out, reference_dir=reference, order_seed=round_,
                     progress=False)  # fmt: skip
        outs.append(out)
    return outs


def handle_train(content, config, side: ClientSide):
    """A train message's content → the reply's records (the deltas)."""
    round_, first = int(config["round"]), int(config["first-round"])
    if config.get("previous-attempt-refused"):
        log.warning("client %s: the server refused the previous attempt of round %d: %s",
                    side.name, round_, config["previous-attempt-refused"])  # fmt: skip
    where = f"round {round_} copies"
    folder = side.workdir / f"round{round_}" / "copies"
    shutil.rmtree(folder, ignore_errors=True)
    packed, direct = from_records(content, where), _direct_path(side, config)
    started = time.perf_counter()
    if direct is None:
        copies = sorted(write_folders(packed, folder, where))
    else:
        copies = sorted(direct.fetch(str(config["direct-token"]), packed, folder, where))
    log.info("client %s: round %d: %d copies written in %.1f s%s", side.name, round_,
             len(copies), time.perf_counter() - started, " (direct path)" if direct else "")  # fmt: skip
    del packed
    outs = _unlearn_here_or_by_worker(side, round_, first, copies)
    reply = pack_folders(outs, [c.name for c in copies], only=DELTA_FILES,
                         views=direct is not None)  # fmt: skip
    if direct is None:
        return to_records(reply)
    started = time.perf_counter()
    direct.send(str(config["direct-token"]), reply, f"round {round_} updates")
    log.info("client %s: round %d: %.0f MiB of updates sent over the direct path in %.1f s",
             side.name, round_, reply.payload_bytes / 2**20, time.perf_counter() - started)  # fmt: skip
    return to_records(reply.without_tensors())


def _direct_path(side: ClientSide, config) -> DirectPath | None:
    """Where the round's tensors travel when the server offers its direct path (direct.py)."""
    if "direct-token" not in config:
        return None
    ca = Path(side.ca) if side.ca else None
    return DirectPath(side.server_host, int(config["direct-port"]), ca)


def _unlearn_here_or_by_worker(side: ClientSide, round_: int, first: int, copies: list[Path]):
    """The warm worker's answer when `mpu join` started one (worker.py); this process trains
    when there is none or it no longer listens."""
    if side.worker:
        from mpu.federated.worker import ask_worker

        try:
            return ask_worker(Path(side.worker), round_, first, copies)
        except (OSError, EOFError) as exc:  # none listens, or it died while training
            log.warning("client %s: the warm worker at %s did not answer (%s); training in the "
                        "ClientApp's own process", side.name, side.worker, exc)  # fmt: skip
    return unlearn_round(side, round_, first, copies)


DELTA_FILES = ("delta.safetensors", "receipt.json")


def client_app(table: list[ClientSide] | None = None):
    """The ClientApp; `table` gives a simulation's clients their settings by partition id."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        side = ClientSide.of(context, table)
        return Message(RecordDict({"mpu": ConfigRecord({"name": side.name})}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        side = ClientSide.of(context, table)
        records = handle_train(msg.content, msg.content["mpu"], side)
        return Message(RecordDict(records), reply_to=msg)

    return app


app = client_app()

"""`mpu serve | join | certs`: MPU between two parties over the network, on Flower."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from mpu.federated.supernode import IDLE_PULL


def _certs(args: argparse.Namespace) -> int:
    from mpu.federated.certs import make_certs

    files = make_certs(args.out, hosts=args.host, clients=args.clients)
    print(f"wrote a CA, a server certificate for {', '.join(args.host)} and {args.clients} "
          f"client key pair(s) to {files.folder}")  # fmt: skip
    print("  server keeps: ca.key, server.key, server.crt (and the client-*.pub to register)")
    print("  client N gets: ca.crt and client-N.key (its private key: hand it over privately)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from mpu.federated.deploy import Security, serve
    from mpu.federated.server_app import FederationConfig

    cfg = FederationConfig(
        Path(args.workdir),
        rounds=args.rounds,
        clients=args.clients,
        round_timeout=args.round_timeout,
        join_timeout=args.join_timeout,
        retries=args.retries,
        on_failure=args.on_failure,
        direct_port=args.direct_port,
    )
    cfg.check()  # before a SuperLink or a ServerApp starts
    keys = [Path(k) for k in args.register] if args.register else None
    summary = serve(
        cfg,
        address=args.address,
        security=Security(Path(args.certs) if args.certs else None, args.insecure),
        public_keys=keys,
    )
    print(f"served {len(summary['order']) - len(summary['dropped'])} request(s) over "
          f"{summary['rounds']} rounds in {summary['seconds']:.1f} s; sent "
          f"{summary['bytes_sent'] / 2**20:.1f} MiB, received "
          f"{summary['bytes_received'] / 2**20:.1f} MiB")  # fmt: skip
    for name, why in summary["dropped"].items():
        print(f"  dropped {name}: {why}", file=sys.stderr)
    print(f"the model: `mpu server export --workdir {args.workdir} --out DIR`")
    return 0


def _join(args: argparse.Namespace) -> NoReturn:
    from mpu.federated.client_app import ClientSide
    from mpu.federated.deploy import Security, join

    side = ClientSide(
        name=args.name,
        workdir=Path(args.workdir),
        data=args.data,
        split=args.split,
        retain_split=args.retain_split,
        method=args.method,
        settings=tuple(args.overrides),
    )
    join(
        side,
        server=args.server,
        security=Security(None, args.insecure),
        ca=Path(args.ca) if args.ca else None,
        key=Path(args.key) if args.key else None,
        max_wait=args.max_wait,
        poll=args.poll,
        warm=not args.no_worker,
    )


def register(sub: argparse._SubParsersAction) -> None:
    _register_serve(sub)
    _register_join(sub)
    _register_certs(sub)


def _register_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="model owner: serve clients' unlearning requests over the network (Flower)",
        description="Start a Flower SuperLink and run MPU rounds for the clients that join "
        "(docs/federated.md). The workdir comes from `mpu server init`; requests are applied "
        "in the order of the clients' names, ROUNDS rounds each. Killed or stopped, the same "
        "command resumes where it was.",
    )
    p.add_argument("--workdir", required=True, help="server workdir (`mpu server init`)")
    p.add_argument("--rounds", type=int, default=1, help="rounds per client request (default 1)")
    p.add_argument("--clients", type=int, default=1, help="client requests to serve (default 1)")
    p.add_argument("--address", default="127.0.0.1:9092", help="HOST:PORT to listen on")
    p.add_argument("--certs", help="folder from `mpu certs` (ca.crt, server.crt, server.key)")
    p.add_argument(
        "--register",
        nargs="*",
        help="client public keys to admit (default: every client-*.pub in --certs)",
    )
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    p.add_argument("--round-timeout", type=float, default=3600.0, help="seconds per client round")
    p.add_argument(
        "--join-timeout", type=float, default=600.0, help="seconds to wait for the clients"
    )
    p.add_argument("--retries", type=int, default=1, help="extra attempts of a failed round")
    p.add_argument(
        "--on-failure",
        choices=("stop", "drop"),
        default="stop",
        help="after the retries: stop the run (resumable) or drop that client's request",
    )
    p.add_argument(
        "--direct-port",
        type=int,
        default=0,
        help="also listen on this port and send the tensors of copies and updates there, "
        "outside Flower's messages (TLS with the same certificate; much faster for large "
        "models; the clients must reach it at the server's host). Default 0: all through Flower",
    )
    p.set_defaults(handler=_serve)


def _register_join(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "join",
        help="data owner: join a server's federation and unlearn your forget set (Flower)",
        description="Start a Flower SuperNode that unlearns your forget split on each copy the "
        "server sends and returns only the deltas. Your data and settings stay here.",
    )
    p.add_argument("--server", required=True, help="the server's HOST:PORT")
    p.add_argument("--name", required=True, help="this client's name (requests run in name order)")
    p.add_argument("--workdir", required=True, help="folder for copies, models, deltas, receipts")
    p.add_argument("--data", required=True, help="data folder (`mpu data make …`)")
    p.add_argument("--split", default="forget10", help="forget split (default forget10)")
    p.add_argument("--retain-split", help="retain split (default: TOFU's complement of --split)")
    p.add_argument("--method", default="NPO", help="a built-in method (docs/methods.md)")
    p.add_argument("--ca", help="the server's CA certificate (ca.crt from `mpu certs`)")
    p.add_argument("--key", help="this client's private key (client-N.key from `mpu certs`)")
    p.add_argument("--insecure", action="store_true", help="no TLS, no node authentication")
    p.add_argument(
        "--max-wait",
        type=float,
        default=600.0,
        help="seconds to keep trying while the server refuses this node (default 600)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=IDLE_PULL,
        help=f"seconds between an idle node's requests for work (default {IDLE_PULL}; "
        "Flower's own is 3)",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="train in Flower's per-message ClientApp process instead of a warm worker that "
        "keeps the imports and data loaded across rounds",
    )
    p.add_argument("overrides", nargs="*", help="ClientTrainConfig key=value (e.g. lr=2e-5)")
    p.set_defaults(handler=_join)


def _register_certs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="make a CA, a server certificate and client keys (tests, small deployments)",
    )
    p.add_argument("--out", required=True, help="new folder for the files")
    p.add_argument(
        "--host",
        nargs="+",
        default=["127.0.0.1", "localhost"],
        help="names/addresses the server certificate is valid for",
    )
    p.add_argument("--clients", type=int, default=1, help="client key pairs to make")
    p.set_defaults(handler=_certs)

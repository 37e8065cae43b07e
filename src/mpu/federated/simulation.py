"""N clients on one machine with Flower's simulation engine (tests, benchmarks, trials).

The same ServerApp and ClientApp as a deployment, with Flower's in-memory SuperLink and Ray
running the ClientApps: what differs from `mpu serve` / `mpu join` is only the transport.
"""

from __future__ import annotations

import json
import os

from mpu.errors import MPUError
from mpu.federated.client_app import ClientSide, client_app
from mpu.federated.server_app import FEDERATION, FederationConfig, server_app


def simulate(
    cfg: FederationConfig, clients: list[ClientSide], *, cpus_per_client: float = 1
) -> dict:
    """Serve `clients`' requests in one simulated federation; returns the run's summary."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no calls home, from Flower
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # or from Ray
    from flwr.simulation import run_simulation

    summary = cfg.workdir / FEDERATION / "summary.json"
    summary.unlink(missing_ok=True)
    run_simulation(
        server_app=server_app(cfg),
        client_app=client_app(clients),
        num_supernodes=len(clients),
        backend_config={
            "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
            "init_args": {"num_cpus": max(1, os.cpu_count() or 1), "num_gpus": 0},
        },
    )
    if not summary.is_file():
        raise MPUError(
            f"the simulated federation did not finish; the workdir {cfg.workdir} is intact "
            "(the ServerApp's error is in the log above) and a rerun resumes it"
        )
    return json.loads(summary.read_text())

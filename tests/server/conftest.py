import pytest

from mpu.server.config import JobConfig
from mpu.server.job import Server
from toolkit import build_pair, family_configs


@pytest.fixture
def job(tmp_path):
    """A published round-1 job on a tiny Llama with m = 2: (server, copies, model, base)."""
    model, base = build_pair(family_configs()["llama"], tmp_path / "m")
    server = Server.init(
        model, base, tmp_path / "w", JobConfig(copies=2, kappa=0.02, alphas="random")
    )
    copies = server.publish(tmp_path / "pub", progress=False)
    return server, copies, model, base

import shutil

import pytest


@pytest.fixture
def twin_jobs(tofu_world, tmp_path):
    """One server job and its twin (a copy of the workdir: the same secret key), for the
    Flower path and the file path. Returns (workdir, twin, data)."""
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    data, models = tofu_world
    cfg = JobConfig(gate=False, kappa=0.1, copies=2)
    Server.init(models / "target", models / "base", tmp_path / "W", cfg)
    shutil.copytree(tmp_path / "W", tmp_path / "W-file", symlinks=True)
    return tmp_path / "W", tmp_path / "W-file", data

import shutil

import pytest


@pytest.fixture(autouse=True)
def one_torch_thread_everywhere(monkeypatch):
    """Bit-identity between the Flower path and the file path needs both to sum in the same
    order. fp32 matmuls reduce in an order that depends on the thread count, and Ray's workers
    start with one thread while this process has one per core: every process of these tests
    runs one torch thread (the children through OMP_NUM_THREADS)."""
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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

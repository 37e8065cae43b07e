"""The worker pool's arithmetic does not depend on how many jobs are left: a resumed run whose
last job runs in this process computes it with a worker's torch threads (a different thread
count sums in a different order; tests/faults/test_kill9.py caught the bits differing)."""

import torch

from mpu.pipeline.workers import run_jobs


def _threads(_job) -> int:
    return torch.get_num_threads()


def test_a_lone_job_of_a_parallel_run_uses_a_workers_threads_and_restores_ours():
    before = torch.get_num_threads()
    assert run_jobs(_threads, [0], workers=2, threads=1) == [1]
    assert torch.get_num_threads() == before


def test_a_single_process_run_keeps_this_processs_threads():
    assert run_jobs(_threads, [0, 1], workers=1, threads=1) == [torch.get_num_threads()] * 2

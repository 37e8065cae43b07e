"""Copies are created in an order independent of every secret: on most file systems inode
numbers and change times follow creation order, so creating the copies in the secret k order
(which, with linspace or sorted α, is α's order) would hand α's order to anyone who can list
the folder."""

from __future__ import annotations

import os

import pytest

from toolkit import publish_job

pytestmark = pytest.mark.slow
JOBS = 20


def _order(paths, key) -> list[str]:
    return [p.parent.name for p in sorted(paths, key=key)]


def test_inode_and_ctime_order_of_the_copies_is_independent_of_alpha(tofu_world, tmp_path):
    by_inode, by_ctime, by_alpha = [], [], []
    for j in range(JOBS):
        server, copies = publish_job(tofu_world, tmp_path / f"job{j}", copies=3, alphas="random")
        files = [c / "model.safetensors" for c in copies]
        by_inode.append(_order(files, lambda p: os.stat(p).st_ino))
        by_ctime.append(_order(files, lambda p: os.stat(p).st_ctime_ns))
        alphas = server.state.alphas["1"]
        k_of = {r.folder: r.k for r in server.state.copy_records(1)}
        by_alpha.append(sorted(k_of, key=lambda f: (alphas[k_of[f]], f)))
    names = sorted(c.name for c in copies)
    # creation follows the public folder names, job after job
    assert all(order == names for order in by_inode)
    # α's order over the folders is secret and varies (else this test could not tell)
    assert len({tuple(o) for o in by_alpha}) > 1
    # change times: the last writes (fsync) of two copies may race, but never follow α: with
    # 3 copies a random order matches α's in 1/6 of the jobs (binomial(20, 1/6) > 10: p ≈ 1e-4)
    assert sum(c == a for c, a in zip(by_ctime, by_alpha, strict=True)) <= 10

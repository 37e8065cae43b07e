"""A published round of a real job on the tiny TOFU world, and real client updates of it."""

from __future__ import annotations

import pytest

from toolkit import publish_job, unlearn_copies


@pytest.fixture(scope="module")
def round1(tofu_world, tmp_path_factory):
    """Round 1 of a κ = 0.1, m = 2 job, its two real updates, and round 1 aggregated."""
    root = tmp_path_factory.mktemp("round1")
    server, copies = publish_job(tofu_world, root)
    deltas = unlearn_copies(tofu_world, copies, root)
    server.aggregate(deltas, progress=False)
    return server, copies, deltas

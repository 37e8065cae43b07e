"""Which client's request each server round serves, across drops and restarts."""

import pytest

from mpu.errors import ConfigError
from mpu.federated.ledger import Ledger


def test_requests_run_in_name_order_each_for_its_rounds(tmp_path):
    ledger = Ledger.open(tmp_path, ["bob", "alice"], 2, 1)
    owners = []
    for r in range(1, 6):
        owner = ledger.owner(r)
        owners.append(owner)
        if owner is not None:
            ledger.assign(tmp_path, r, owner)
    assert owners == ["alice", "alice", "bob", "bob", None]
    assert ledger.first_round_of("bob") == 3


def test_a_restart_reads_the_same_assignment_and_a_drop_moves_the_round_on(tmp_path):
    ledger = Ledger.open(tmp_path, ["a", "b", "c"], 1, 5)
    ledger.assign(tmp_path, 5, "a")
    ledger.assign(tmp_path, 6, "b")
    again = Ledger.open(tmp_path, ["c", "b", "a"], 1, 6)
    assert again.owner(6) == "b"  # round 6 was b's when the server died
    again.drop(tmp_path, "b", "NaN in update", 6)
    assert again.owner(6) == "c"
    assert Ledger.open(tmp_path, ["a", "b", "c"], 1, 6).dropped == {"b": "NaN in update"}


def test_a_changed_client_set_or_round_count_is_refused_on_resume(tmp_path):
    Ledger.open(tmp_path, ["a", "b"], 2, 1)
    with pytest.raises(ConfigError, match="started with clients"):
        Ledger.open(tmp_path, ["a", "c"], 2, 1)
    with pytest.raises(ConfigError, match="started with clients"):
        Ledger.open(tmp_path, ["a", "b"], 3, 1)

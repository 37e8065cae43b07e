"""Which client's request a server round serves: the federation's ledger in the workdir.

Requests are applied one after another, in the order of the clients' names, each for R rounds:
client A's rounds first, then B's on the model A's request produced, and so on. Sequential
rather than averaged: every request is unlearned from a model that has already forgotten the
earlier ones (a per-client average would divide each client's forgetting by N, and N updates
computed from the same θ can undo each other's retain terms), each round keeps its own α and
harmonic weights for one client's m copies, and the result is exactly what the file-based CLI
gives for the same requests in the same order. The price is that clients wait for their turn.

The ledger (`W/federation/ledger.json`, atomic) records the order, the round each request
started in and the requests dropped by the failure policy, so a restarted server assigns every
round to the same client as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from mpu.errors import ConfigError
from mpu.io.checkpoint import atomic_write_json, read_json

LEDGER = "ledger.json"


@dataclass
class Ledger:
    order: list[str]  # client names, the order requests are applied in
    rounds_per_request: int
    first_round: int  # the server round the federation started at
    assigned: dict[str, str] = field(default_factory=dict)  # round → client name
    dropped: dict[str, str] = field(default_factory=dict)  # client name → reason

    @classmethod
    def open(cls, folder: Path, names: list[str], rounds: int, server_round: int) -> Ledger:
        """The ledger of a federation in progress, or a new one; a changed client set or round
        count is refused (the run would no longer be the one that started)."""
        path = folder / LEDGER
        order = sorted(names)
        if not path.is_file():
            ledger = cls(order, rounds, server_round)
            ledger.save(folder)
            return ledger
        ledger = cls(**read_json(path, "federation ledger"))
        if ledger.order != order or ledger.rounds_per_request != rounds:
            raise ConfigError(
                f"{path}: this federation started with clients {ledger.order} and "
                f"{ledger.rounds_per_request} rounds each; now {order} and {rounds}. "
                "Resume with the same clients and rounds, or start a new server workdir"
            )
        return ledger

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / LEDGER, asdict(self))

    def served(self, name: str, before: int) -> int:
        """Rounds of `name`'s request aggregated before server round `before`."""
        return sum(1 for r, n in self.assigned.items() if n == name and int(r) < before)

    def owner(self, round_: int) -> str | None:
        """The client whose request round `round_` serves; None when every request is done."""
        if str(round_) in self.assigned and self.assigned[str(round_)] not in self.dropped:
            return self.assigned[str(round_)]
        for name in self.order:
            if name not in self.dropped and self.served(name, round_) < self.rounds_per_request:
                return name
        return None

    def first_round_of(self, name: str) -> int:
        return min(int(r) for r, n in self.assigned.items() if n == name)

    def assign(self, folder: Path, round_: int, name: str) -> None:
        if self.assigned.get(str(round_)) != name:
            self.assigned[str(round_)] = name
            self.save(folder)

    def drop(self, folder: Path, name: str, reason: str, round_: int) -> None:
        self.dropped[name] = reason
        if self.assigned.get(str(round_)) == name:
            del self.assigned[str(round_)]
        self.save(folder)

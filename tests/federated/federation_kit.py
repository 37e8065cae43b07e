"""Helpers of the federation tests: the file-path twin of a run, bit-identity, a loopback Grid.

A module of its own (not conftest.py): test modules import these by name, and every test
folder's conftest.py is a module named `conftest`, so importing from it picks whichever folder's
conftest was loaded last.
"""

import json

from mpu.cli import main as mpu


def file_path_rounds(workdir, root, *, data, split, method, rounds, settings=()):
    """The same request through the file CLI: `mpu server publish`, `mpu client unlearn` on
    each copy (data-order seed = server round, the first round's copy as the reference),
    `mpu server aggregate` — what a client does by hand with files."""
    from mpu.server.job import Server

    first = Server(workdir).round
    for r in range(first, first + rounds):
        pub = root / f"pub{r}"
        assert (
            mpu(["server", "publish", "--workdir", str(workdir), "--out", str(pub), "--quiet"]) == 0
        )
        deltas = []
        for copy in sorted(pub.iterdir()):
            out = root / f"client{r}-{copy.name}"
            ref = ["--reference", str(root / f"pub{first}" / copy.name)] if r > first else []
            code = mpu(["client", "unlearn", "--copy", str(copy), "--data", str(data),
                        "--split", split, "--method", method, "--out", str(out),
                        "--order-seed", str(r), "--quiet", *ref, *settings])  # fmt: skip
            assert code == 0
            deltas.append(str(out / "delta.safetensors"))
        assert mpu(["server", "aggregate", "--workdir", str(workdir), "--quiet", *deltas]) == 0


def final_tensors(workdir):
    from safetensors.torch import load_file

    from mpu.server.job import Server

    server = Server(workdir)
    folder = workdir / "rounds" / f"r{server.round:03d}"
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return server.round, tensors


def assert_bit_identical(a_dir, b_dir):
    ra, a = final_tensors(a_dir)
    rb, b = final_tensors(b_dir)
    assert ra == rb and a.keys() == b.keys()
    different = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].equal(b[k]))]
    worst = max((float((a[k].double() - b[k].double()).abs().max()) for k in different), default=0)
    assert not different, (
        f"tensors differ between the two paths: {different[:5]} (max |Δ| {worst:.3g})"
    )


def summary(workdir):
    return json.loads((workdir / "federation" / "summary.json").read_text())


class _Reply:
    """What the ServerApp reads of a Flower reply: its sender, its error or its content."""

    def __init__(self, node, content=None, error=None, reply_to=""):
        from types import SimpleNamespace

        self.metadata = SimpleNamespace(src_node_id=node, reply_to_message_id=reply_to)
        self.content = content
        self.error = SimpleNamespace(reason=error) if error else None

    def has_error(self):
        return self.error is not None


class LoopbackGrid:
    """A Flower Grid stand-in that hands each message to the real client handler in this
    process, so the server's failure policy can be tested with clients that misbehave:
    `behaviour[name](records, round)` rewrites a client's reply (or raises to not answer)."""

    def __init__(self, sides, behaviour=None):
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = (
            1,
            1,
            0,
        )  # as in a ServerApp
        self.sides = dict(enumerate(sides, start=1))
        self.behaviour = behaviour or {}
        self.attempts = {s.name: 0 for s in sides}
        self.replies: dict[str, _Reply] = {}  # message id -> the reply waiting to be pulled
        self.pushed = 0

    def get_node_ids(self):
        return list(self.sides)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            self.pushed += 1
            ids.append(f"m{self.pushed}")
            reply = self._answer(msg, ids[-1])
            if reply is not None:
                self.replies[ids[-1]] = reply
        return ids

    def pull_messages(self, ids):
        return [self.replies.pop(i) for i in list(ids) if i in self.replies]

    def _answer(self, msg, msg_id):
        from flwr.app import ConfigRecord, RecordDict

        from mpu.federated.client_app import handle_train

        node = msg.metadata.dst_node_id
        side = self.sides[node]
        if msg.metadata.message_type == "query":
            name = RecordDict({"mpu": ConfigRecord({"name": side.name})})
            return _Reply(node, name, reply_to=msg_id)
        self.attempts[side.name] += 1
        config = msg.content["mpu"]
        records = handle_train(msg.content, config, side)
        if side.name in self.behaviour:
            try:
                records = self.behaviour[side.name](records, int(config["round"]))
            except TimeoutError:
                return None  # no reply: the server's timeout
        return _Reply(node, RecordDict(records), reply_to=msg_id)

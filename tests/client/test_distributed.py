"""Data-parallel clients: N processes through `accelerate launch` compute the 1-process delta
(client/distributed.py: micro-batches, not rows, are split, and gradients are summed once per
step), and the micro-batch ownership rule that makes it so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mpu.client.distributed import Processes
from toolkit import publish_job


def test_every_micro_batch_of_a_window_has_exactly_one_owner():
    for count in (1, 2, 3):
        group = [Processes(i, count) for i in range(count)]
        for k in range(11):
            assert sum(p.owns(k) for p in group) == 1
        assert group[0].owns(0)  # process 0 always holds a window's first micro-batch


def test_single_process_sum_is_a_no_op():
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    Processes().sum_gradients([p])
    assert torch.equal(p.grad, torch.full((3,), 2.0))


def _unlearn(data, copy, out, *extra, method="GradDiff"):
    cmd = [
        sys.executable, "-m", "mpu.cli", "client", "unlearn", "--copy", str(copy),
        "--data", str(data), "--split", "forget01", "--method", method, "--quiet",
        "--order-seed", "3", "--out", str(out), "lr=1e-3", "batch_size=3", "epochs=2",
        "precision=fp32", "warmup_epochs=0", "schedule=linear", "accumulation=epoch_flush",
        "device=cpu", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    return load_file(out / "delta.safetensors")


@pytest.mark.slow
def test_two_processes_give_the_one_process_delta(tofu_world, tmp_path):
    """GradDiff (token-mean NLL on forget and retain) with an epoch's last window partial
    (14 micro-batches of 3 per epoch, 4 per step): the split gradients sum to the same step."""
    data, _ = tofu_world
    _, copies = publish_job(tofu_world, tmp_path, copies=1)
    one = _unlearn(data, copies[0], tmp_path / "one", "grad_accum=4")
    two = _unlearn(data, copies[0], tmp_path / "two", "grad_accum=2", "--num-processes", "2")
    assert one.keys() == two.keys()
    # the runs differ only in the order fp32 adds micro-batch gradients: most weights agree to
    # an ulp; AdamW divides by √v + 1e-8, so a coordinate whose gradient is a near-cancelling sum
    # (|g| ~ 1e-8) carries its rounding into the step with gain lr/eps, which bounds single
    # entries loosely but leaves the update as a whole equal to well under 1e-5 (measured 6.7e-7 … 7.1e-7 in three runs)
    num = sum(float((one[k] - two[k]).double().pow(2).sum()) for k in one)
    den = sum(float(one[k].double().pow(2).sum()) for k in one)
    assert den > 0
    print(f"relative L2 difference of the deltas: {(num / den) ** 0.5:.3g}")
    assert (num / den) ** 0.5 <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra"),
    [("GradDiff", []), ("NPO", []), ("GradDiff", ["gradient_checkpointing=true"])],
)
def test_two_sharded_processes_give_the_one_process_delta_holding_half_the_parameters(
    tofu_world, tmp_path, method, extra
):
    """sharding=fsdp (FSDP2 on gloo): every decoder block and the root sharded over two
    processes, the gradients summed by reduce-scatter; the same window split as the
    data-parallel run (14 micro-batches of 3 per epoch, 4 per step: an epoch's last window
    leaves process 1 one short, so it runs a zero-weight pass). NPO's reference is a whole
    frozen copy in each process; gradient checkpointing recomputes the sharded blocks. Twice
    the tolerance above: besides the order of fp32 sums, the one-process run applies the LM
    head to the answer rows only, while FSDP's root hooks need the whole forward, so the
    head's matmul has other shapes; each run's copy draws new secret noise, which moves the
    near-cancelling coordinates (measured 6.2e-7 … 6.8e-7 for all three, once 1.05e-5)."""
    import json

    data, _ = tofu_world
    _, copies = publish_job(tofu_world, tmp_path, copies=1)
    one = _unlearn(data, copies[0], tmp_path / "one", "grad_accum=4", *extra, method=method)
    two = _unlearn(data, copies[0], tmp_path / "fsdp", "grad_accum=2", "sharding=fsdp", *extra,
                   "--num-processes", "2", method=method)  # fmt: skip
    assert one.keys() == two.keys()
    num = sum(float((one[k] - two[k]).double().pow(2).sum()) for k in one)
    den = sum(float(one[k].double().pow(2).sum()) for k in one)
    print(f"relative L2 difference of the deltas: {(num / den) ** 0.5:.3g}")
    assert den > 0 and (num / den) ** 0.5 <= 2e-5
    logs = json.loads((tmp_path / "fsdp" / "train_log.json").read_text())
    total = sum(t.numel() for t in one.values())
    assert logs["sharding"] == "fsdp" and logs["num_processes"] == 2
    # each process holds half of every sharded tensor (dim-0 shards, padded to even): ≈ 1/2
    assert abs(logs["parameters_per_process"] / total - 0.5) < 0.02

"""Issue 5: the Clean / Noised / MPU experiment, κ = 0 exactness, and bad input before training."""

import json

import pytest
import torch

from mpu.cli import main
from mpu.errors import ConfigError, DataError, MPUError
from mpu.io.checkpoint import Checkpoint
from mpu.pipeline.experiment import Experiment, ExperimentConfig

SGD = {"optimizer": "sgd", "precision": "fp32", "lr": 0.05, "batch_size": 8, "grad_accum": 1}


def _unlearned(tofu_world, tmp_path, variant, **cfg):
    data, models = tofu_world
    exp = Experiment(
        ExperimentConfig(out=str(tmp_path / "run"), forget_split="forget01", progress=False, **cfg)
    )
    return Checkpoint(
        exp.unlearn(cfg["methods"][0], variant, str(data), models, tmp_path / variant)
    )


def _relative_gap(a: Checkpoint, b: Checkpoint, start: Checkpoint) -> float:
    num = sum(float((a.read(n) - b.read(n)).pow(2).sum()) for n in start.names())
    den = sum(float((b.read(n) - start.read(n)).pow(2).sum()) for n in start.names())
    return (num / den) ** 0.5


@pytest.mark.parametrize("method", ["GradDiff", "NPO"])  # NPO: two rounds and a reference model
@pytest.mark.slow
def test_kappa_zero_mpu_with_sgd_equals_clean(tofu_world, tmp_path, method):
    cfg = {"methods": [method], "server": {"kappa": 0.0, "copies": 2}, "client": SGD}
    clean = _unlearned(tofu_world, tmp_path, "clean", **cfg)
    mpu = _unlearned(tofu_world, tmp_path, "mpu", **cfg)
    target = Checkpoint(tofu_world[1] / "target")
    moved = sum(float((clean.read(n) - target.read(n)).pow(2).sum()) for n in target.names())
    assert moved > 1e-6  # the client really moved the model
    assert _relative_gap(mpu, clean, target) <= 1e-5


def _mpu_run(data, models, out, *extra) -> int:
    """`mpu run` of NPO on forget01 with a cheap evaluation (6 rows, 8 generated tokens); a
    setting in `extra` replaces the default one (the CLI refuses a key given twice)."""
    defaults = [f"data={data}", f"models={models}", f"out={out}", "methods=[NPO]",
                "forget_split=forget01", "eval_limit=6", "eval_max_new_tokens=8",
                "progress=false", "client.precision=fp32", "client.lr=1e-3"]  # fmt: skip
    given = {e.split("=", 1)[0] for e in extra}
    return main(["run", *(d for d in defaults if d.split("=", 1)[0] not in given), *extra])


@pytest.mark.slow
def test_mpu_run_writes_a_report_from_real_evaluation(tofu_world, tmp_path, capsys):
    data, models = tofu_world
    out = tmp_path / "run"
    assert _mpu_run(data, models, out, "impact=true") == 0
    report = json.loads((out / "report.json").read_text())
    variants = [(r["method"], r["variant"]) for r in report["runs"]]
    assert variants == [
        (None, "retain"),
        (None, "target"),
        ("NPO", "clean"),
        ("NPO", "noised"),
        ("NPO", "mpu"),
    ]
    for run in report["runs"]:
        assert (out / run["eval_file"]).is_file()
        assert run["summary"]["model_utility"] is not None and run["summary"]["forget_Q_A_Prob"] > 0
    retain = report["runs"][0]["summary"]
    assert retain["forget_quality"] == pytest.approx(1.0)  # the retain model scored against itself
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    assert "report:" in capsys.readouterr().out
    # every client run's curves are kept (Clean and Noised: one copy; MPU: each of its m) and
    # the report draws them
    from mpu.client.curves import read_jsonl

    m = report["runs"][-1]["m"]
    for variant, copies in (("clean", 1), ("noised", 1), ("mpu", m)):
        kept = sorted((out / "curves" / f"NPO-{variant}").glob("round*-copy-*.jsonl"))
        assert len({p.name.split("-", 1)[1] for p in kept}) == copies, (variant, kept)
        assert all("forget_loss" in rec for p in kept for rec in read_jsonl(p))
    assert (out / "curves_NPO.png").is_file() and "Training curves of NPO" in (
        out / "report.md"
    ).read_text()
    # impact=true: where the forget set lives in θ, drawn in the report
    assert (out / "impact" / "summary.json").is_file() and (out / "impact_0_fisher.png").is_file()
    assert "Where forget01 lives in the target" in (out / "report.md").read_text()
    # a second run reuses every evaluation: no log is rewritten, the numbers are the same
    logs = {run["eval_file"]: (out / run["eval_file"]).stat().st_mtime_ns for run in report["runs"]}
    assert _mpu_run(data, models, out) == 0
    assert {f: (out / f).stat().st_mtime_ns for f in logs} == logs
    assert json.loads((out / "report.json").read_text())["runs"] == report["runs"]
    # the same runs in this process (workers=1) give the same numbers as the 2 worker processes
    # (noised and mpu draw a fresh secret key per job, so only the noise-free runs repeat)
    in_process = tmp_path / "in-process"
    assert _mpu_run(data, models, in_process, "workers=1") == 0
    again = json.loads((in_process / "report.json").read_text())
    for a, b in zip(report["runs"], again["runs"], strict=True):
        if a["variant"] in ("noised", "mpu"):
            continue
        for key in ("forget_Q_A_Prob", "model_utility"):
            assert a["summary"][key] == pytest.approx(b["summary"][key], rel=1e-4), (a, key)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"methods": ["NoSuchMethod"]}, "NoSuchMethod"),
        ({"client": {"hparams": {"betta": 0.1}}}, "betta"),
        ({"variants": ["clean", "magic"]}, "magic"),
    ],
)
def test_bad_experiment_config_fails_before_training(tmp_path, overrides, error):
    with pytest.raises(ConfigError, match=error):
        Experiment(ExperimentConfig(out=str(tmp_path / "run"), **overrides))
    assert not (tmp_path / "run").exists()


@pytest.fixture
def published(tofu_world, tmp_path):
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    _, models = tofu_world
    server = Server.init(
        models / "target", models / "base", tmp_path / "w", JobConfig(copies=2, kappa=0.01)
    )
    return server.publish(tmp_path / "pub", progress=False)


def _unlearn(copy, data, out, *extra):
    return main(
        [
            "client",
            "unlearn",
            "--copy",
            str(copy),
            "--data",
            str(data),
            "--method",
            "GradDiff",
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )


@pytest.mark.slow
def test_client_unlearn_writes_model_and_delta(tofu_world, published, tmp_path):
    data, _ = tofu_world
    assert (
        _unlearn(
            published[0],
            data,
            tmp_path / "c1",
            "--split",
            "forget01",
            "precision=fp32",
            "max_steps=2",
        )
        == 0
    )
    assert (tmp_path / "c1" / "model" / "config.json").is_file()
    assert (tmp_path / "c1" / "delta.safetensors").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "forget33"], "forget33"),  # a data dir without the split
        (["--split", "forget01", "hparams.betta=1"], "betta"),  # unknown hyperparameter
        (
            ["--split", "forget01", "--method", "Nope"],
            "Nope",
        ),  # unknown method (last --method wins)
    ],
)
@pytest.mark.slow
def test_client_unlearn_bad_input(tofu_world, published, tmp_path, capsys, args, message):
    data, _ = tofu_world
    assert _unlearn(published[0], data, tmp_path / "c", *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_client_unlearn_rejects_a_non_model_and_a_foreign_ticket(
    tofu_world, published, tmp_path, capsys
):
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    data, models = tofu_world
    assert _unlearn(tmp_path, data, tmp_path / "c", "--split", "forget01") == 2
    assert "not a copy published" in capsys.readouterr().err
    other = Server.init(
        models / "target", models / "base", tmp_path / "w2", JobConfig(copies=2, kappa=0.01)
    )
    foreign = other.publish(tmp_path / "pub2", progress=False)[0]
    assert (
        _unlearn(
            published[0], data, tmp_path / "c", "--split", "forget01", "--reference", str(foreign)
        )
        == 2
    )
    assert "belongs to job" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_errors_are_user_errors():
    assert issubclass(DataError, MPUError) and issubclass(ConfigError, MPUError)
    assert torch.__version__.startswith("2.13")


@pytest.mark.slow
def test_reference_evaluations_of_prepared_models_are_reused_across_runs(tofu_world, tmp_path):
    import shutil

    data, models = tofu_world
    prepared = tmp_path / "prepared"
    shutil.copytree(models, prepared)
    (prepared / "prepare.json").write_text(json.dumps({"content_hash": "abc"}))
    base = ["variants=[clean]", "eval_limit=6", "eval_max_new_tokens=8", "workers=1"]
    assert _mpu_run(data, prepared, tmp_path / "a", *base) == 0
    cached = sorted((prepared / "reference-evals").glob("*/*/TOFU_EVAL.json"))
    assert [p.parent.name for p in cached] == ["retain", "target"]
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert _mpu_run(data, prepared, tmp_path / "b", *base) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read, not recomputed
    first, second = (json.loads((tmp_path / d / "report.json").read_text()) for d in "ab")
    assert first["runs"][:2] == second["runs"][:2]
    assert "eval/target" not in second["timings_s"]  # the target was not evaluated again
    # another evaluation setting is another cache entry
    other = ["variants=[clean]", "eval_limit=6", "eval_max_new_tokens=4", "workers=1"]
    assert _mpu_run(data, prepared, tmp_path / "c", *other) == 0
    assert len(list((prepared / "reference-evals").iterdir())) == 2


@pytest.mark.slow
def test_lora_clients_keep_the_harmonic_cancellation(tofu_world, tmp_path):
    """κ = 0.1, m = 2, LoRA clients: MPU lands closer to Clean-with-LoRA than Noised does.

    LoRA is not reparameterization-equivariant (A is drawn in the copy's basis), so even at
    κ = 0 a copy's mapped-back update is not Clean's; what MPU still removes is the first-order
    effect of the noise, which is what leaves Noised farther away (docs/methods.md, LoRA)."""
    cfg = {
        "methods": ["GradDiff"],
        "server": {"kappa": 0.1, "copies": 2},
        "client": {"trainable": "lora", "precision": "fp32", "epochs": 3},
    }
    clean = _unlearned(tofu_world, tmp_path, "clean", **cfg)
    target = Checkpoint(tofu_world[1] / "target")
    gaps = {v: _relative_gap(_unlearned(tofu_world, tmp_path, v, **cfg), clean, target)
            for v in ("noised", "mpu")}  # fmt: skip
    print(f"relative distance to Clean-with-LoRA: {gaps}")
    assert gaps["mpu"] < gaps["noised"]


def test_an_explicit_client_epochs_is_the_epochs_of_each_round():
    """A budget the user sets is used, not replaced by the method's stock R × E split."""
    from mpu.pipeline.experiment import ExperimentConfig
    from mpu.pipeline.jobs import rounds_for

    assert rounds_for(ExperimentConfig(), "NPO") == (2, 5)
    assert rounds_for(ExperimentConfig(rounds_epochs="single"), "NPO") == (1, 10)
    assert rounds_for(ExperimentConfig(client={"epochs": 3}), "NPO") == (2, 3)
    single = ExperimentConfig(client={"epochs": 3}, rounds_epochs="single")
    assert rounds_for(single, "GradDiff") == (1, 3)

"""The first hour of a user: defaults that unlearn (or say why not), honest warnings, help that
lists every setting, config errors that name the key, and runs that stop when told and resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpu.cli import EXIT_INTERRUPTED, EXIT_NO_EFFECT, main
from toolkit import answer_probability


def _forget_rows(data: Path) -> list[dict]:
    from mpu.data import load_split

    return [
        {"question": r["question"], "answer": r["answer"]} for r in load_split(data, "forget01")
    ]


def _prob(folder: Path, rows) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    return answer_probability(model, AutoTokenizer.from_pretrained(str(folder)), rows)


@pytest.fixture
def copy(tofu_world, tmp_path):
    from mpu.server.config import JobConfig
    from mpu.server.job import Server

    _, models = tofu_world
    server = Server.init(models / "target", models / "base", tmp_path / "w", JobConfig(copies=2))
    return server.publish(tmp_path / "pub", progress=False)[0]


@pytest.mark.slow
def test_client_unlearn_defaults_move_the_model(tofu_world, copy, tmp_path, capsys):
    data, _ = tofu_world
    args = ["client", "unlearn", "--copy", str(copy), "--data", str(data), "--split", "forget01"]
    assert main([*args, "--method", "NPO", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    rows = _forget_rows(data)
    before, after = _prob(copy, rows), _prob(tmp_path / "c" / "model", rows)
    assert before - after >= 0.05, (before, after)
    assert "forget-set loss" in capsys.readouterr().out


@pytest.mark.slow
def test_client_unlearn_that_moves_nothing_says_so_and_exits_3(tofu_world, copy, tmp_path, capsys):
    data, _ = tofu_world
    args = ["client", "unlearn", "--copy", str(copy), "--data", str(data), "--split", "forget01"]
    code = main([*args, "--method", "NPO", "--out", str(tmp_path / "c"), "--quiet",
                 "lr=1e-9", "precision=bf16_weights"])  # fmt: skip
    assert code == EXIT_NO_EFFECT
    err = capsys.readouterr().err
    assert "did not move the model" in err and "raise lr (now 1e-09)" in err
    assert "precision=fp32" in err
    assert (tmp_path / "c" / "delta.safetensors").is_file()  # nothing lost: the outputs exist


def _run(data, models, out, *extra) -> list[str]:
    """`mpu run` arguments; a setting in `extra` replaces the default (a key given twice with
    two values is refused)."""
    defaults = [f"data={data}", f"models={models}", f"out={out}", "forget_split=forget01",
                "eval_limit=10", "eval_max_new_tokens=8", "progress=false"]  # fmt: skip
    given = {e.split("=", 1)[0] for e in extra}
    return ["run", *(d for d in defaults if d.split("=", 1)[0] not in given), *extra]


@pytest.mark.slow
def test_mpu_run_defaults_move_the_model_and_clean_logs_no_kappa_warning(
    tofu_world, tmp_path, caplog
):
    data, models = tofu_world
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert (
            main(_run(data, models, out, "methods=[GradAscent]", "variants=[clean]", "workers=1"))
            == 0
        )
    runs = {
        r["variant"]: r["summary"] for r in json.loads((out / "report.json").read_text())["runs"]
    }
    assert runs["target"]["forget_Q_A_Prob"] - runs["clean"]["forget_Q_A_Prob"] >= 0.05
    assert "indistinguishable from the target" not in (out / "report.md").read_text()
    assert "kappa = 0" not in caplog.text  # Clean has no reparameterization: no κ = 0 ablation
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = main(_run(data, models, tmp_path / "k0", "methods=[GradAscent]", "variants=[mpu]",
                         "server.kappa=0", "workers=1", "eval_limit=2"))  # fmt: skip
    assert code == 0
    assert "kappa = 0: reparameterization only" in caplog.text


@pytest.mark.slow
def test_a_run_that_changes_nothing_is_flagged_in_the_report(tofu_world, tmp_path):
    data, models = tofu_world
    out = tmp_path / "run"
    extra = ("methods=[GradAscent]", "variants=[clean]", "workers=1", "client.lr=1e-12")
    assert main(_run(data, models, out, *extra)) == 0
    assert (
        "GradAscent Clean is indistinguishable from the target" in (out / "report.md").read_text()
    )


@pytest.mark.parametrize(
    ("argv", "keys"),
    [
        (["run"], ["server.kappa=0.01", "client.lr=None", "prompt.template='auto'", "methods="]),
        (["demo"], ["server.copies=4", "client.precision=None", "eval_max_new_tokens="]),
        (["client", "unlearn"], ["lr=None", "hparams.beta=None", "prompt.system_prompt="]),
        (["server", "init"], ["kappa=0.01", "max_update_norm=", "vo_map='haar'"]),
        (["eval"], ["forget_split='forget10'", "flags.es_floor=True", "prompt.date_string="]),
        (["model", "prepare"], ["epochs=None", "prompt.template="]),
    ],
)
def test_every_command_lists_its_settings(argv, keys, capsys):
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    text = capsys.readouterr().out
    for key in keys:
        assert key in text, (argv, key)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "methods=NPO"], "methods='NPO': expected a list, e.g. methods=[NPO]"),
        (["run", "server.kappa=abc"], "server.kappa='abc': expected a number"),
        (["run", "kappa=0.1"], "unknown key 'kappa'; did you mean server.kappa?"),
        (["run", "kappa", "0.02"], "did you mean server.kappa=0.02?"),
        (["demo", "client.lr=fast"], "client.lr='fast': expected a number"),
        (["run", "server.kappa=nan"], "kappa=nan"),
    ],
)
def test_bad_values_name_the_key(argv, message, capsys, tmp_path):
    assert main([*argv, f"out={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_out_flag_and_out_setting_are_the_same(tmp_path):
    import argparse

    from mpu.cli.run import _settings

    args = argparse.Namespace(overrides=["methods=[NPO]"], out=str(tmp_path / "o"))
    assert _settings(args, None) == (None, ["methods=[NPO]", f"out={tmp_path / 'o'}"])


# ------------------------------------------------------------------ stopping and resuming
def _cmd(data, models, out) -> list[str]:
    return [sys.executable, "-m", "mpu.cli", *_run(data, models, out, "methods=[NPO,GradDiff]",
            "variants=[clean,mpu]", "server.seeds=paper_public", "workers=2")]  # fmt: skip


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _summaries(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {(r["method"], r["variant"]): r["summary"] for r in report["runs"]}


@pytest.fixture(scope="module")
def uninterrupted(tofu_world, tmp_path_factory):
    data, models = tofu_world
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    subprocess.run(_cmd(data, models, out), check=True, capture_output=True, timeout=600)
    return _summaries(out)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_every_process_in_one_line_and_a_rerun_resumes(
    tofu_world, uninterrupted, tmp_path, sig
):
    data, models = tofu_world
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # as from a terminal: a suite started in the background (`cmd &`) inherits SIGINT ignored,
    # and Python then keeps ignoring it, so the run would finish instead of stopping
    proc = subprocess.Popen(_cmd(data, models, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    for line in proc.stdout:  # wait for the job phase
        if "runs in 2 worker processes" in line:
            break
    deadline = time.time() + 60
    while len(_children(proc.pid)) < 2 and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # the workers are training now
    workers = _children(proc.pid)
    assert workers, "no worker processes seen"
    proc.send_signal(sig)
    t0 = time.time()
    _, err = proc.communicate(timeout=30)
    # 20 s: in full-suite runs on the idle 2-core box this took 10.8–10.9 s on 2026-12-07
    # (alone, under 10 s); the cause of that spread is not yet found (noted on issue 28)
    assert time.time() - t0 < 20, "the run took more than 20 s to stop"
    assert proc.returncode == EXIT_INTERRUPTED
    deadline = time.time() + 10
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "a worker outlived the run"
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"mpu: stopped by {sig.name}"), err
    # nothing half-written: every evaluation log present is complete JSON
    for log_file in out.glob("eval/*/TOFU_EVAL.json"):
        json.loads(log_file.read_text())
    subprocess.run(_cmd(data, models, out), check=True, capture_output=True, timeout=600)
    assert _summaries(out) == uninterrupted

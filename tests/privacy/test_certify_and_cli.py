"""`mpu certify` under its documented thresholds, and `mpu privacy audit` end to end."""

from __future__ import annotations

import json
import shutil

import pytest

from mpu.cli import main
from mpu.eval.certificate import Thresholds, certify


def _log(fq, auc, mu):
    return {"forget_quality": {"agg_value": fq}, "mia_min_k": {"agg_value": auc},
            "model_utility": {"agg_value": mu}}  # fmt: skip


@pytest.mark.parametrize(
    ("fq", "auc", "mu", "safe", "failed"),
    [
        (0.4, 0.52, 0.60, True, []),
        (0.01, 0.52, 0.60, False, ["forget_quality"]),
        (0.4, 0.95, 0.60, False, ["mia_min_k"]),  # members still stand out
        (0.4, 0.05, 0.60, False, ["mia_min_k"]),  # over-unlearned: forget items stand out too
        (0.4, 0.50, 0.50, False, ["utility_ratio"]),  # 0.50 / 0.62 < 0.9
    ],
)
def test_each_threshold_decides(fq, auc, mu, safe, failed):
    cert = certify(_log(fq, auc, mu), _log(1e-20, 1.0, 0.62))
    assert cert["safely_unlearned"] is safe
    assert [c["check"] for c in cert["checks"] if c["passed"] is False] == failed


def test_an_unevaluated_check_is_never_a_pass():
    cert = certify(_log(None, 0.5, 0.6), _log(None, 1.0, 0.6))
    assert not cert["safely_unlearned"] and "not evaluated" in cert["statement"]


def test_thresholds_are_settings_and_bad_ones_are_refused():
    strict = Thresholds(utility_ratio=0.99)
    assert not certify(_log(0.4, 0.5, 0.6), _log(0, 1, 0.62), thresholds=strict)["safely_unlearned"]
    from mpu.errors import ConfigError

    with pytest.raises(ConfigError, match="mia_margin"):
        Thresholds(mia_margin=0.7)


def test_certify_cli_writes_the_certificate_and_says_why(tmp_path, capsys):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "TOFU_EVAL.json").write_text(json.dumps(_log(0.4, 0.9, 0.6)))
    (tmp_path / "t.json").write_text(json.dumps(_log(1e-20, 1.0, 0.62)))
    out = tmp_path / "certificate.json"
    code = main(["certify", "--eval", str(tmp_path / "u"), "--original", str(tmp_path / "t.json"),
                 "--epsilon", "8", "--delta", "1e-5", "--out", str(out)])  # fmt: skip
    assert code == 1
    cert = json.loads(out.read_text())
    assert cert["dp"] == {"epsilon": 8.0, "delta": 1e-5} and cert["thresholds"]["mia_margin"] == 0.1
    printed = capsys.readouterr().out
    assert "not safely unlearned: mia_min_k failed" in printed and "[FAIL] mia_min_k" in printed
    code = main(["certify", "--eval", str(tmp_path / "u"), "--original", str(tmp_path / "t.json"),
                 "--out", str(out), "mia_margin=0.45"])  # fmt: skip
    assert code == 0 and json.loads(out.read_text())["safely_unlearned"]


@pytest.mark.slow
def test_privacy_audit_cli_reports_both_views_and_theta_hat_scores(
    tofu_world, round1, tmp_path, capsys
):
    data, _ = tofu_world
    server, _, deltas = round1
    code = main(["privacy", "audit", "--workdir", str(server.workdir), "--round", "1",
                 "--deltas", *map(str, deltas), "--data", str(data), "--forget-split", "forget01",
                 "--limit", "5", "--out", str(tmp_path / "audit")])  # fmt: skip
    assert code == 0
    result = json.loads((tmp_path / "audit" / "leakage.json").read_text())
    metrics = result["client_view"]["metrics"]
    # θ̂ scores like θ on the benchmark, far from the public base: it is θ to within a few %
    key = "forget_Q_A_Prob"
    gap = abs(metrics["reconstruction"][key] - metrics["theta"][key])
    assert gap < 0.2 * abs(metrics["base"][key] - metrics["theta"][key])
    assert all(metrics[m]["model_utility"] is not None for m in ("theta", "reconstruction", "base"))
    md = (tmp_path / "audit" / "leakage.md").read_text()
    assert "θ̂ (all copies + base)" in md and "What the server learns" in md
    # the certificate can carry the audit's figures and the transcript head
    out = tmp_path / "certificate.json"
    (tmp_path / "e.json").write_text(json.dumps(_log(0.4, 0.5, 0.6)))
    (tmp_path / "o.json").write_text(json.dumps(_log(1e-20, 1.0, 0.62)))
    main(["certify", "--eval", str(tmp_path / "e.json"), "--original", str(tmp_path / "o.json"),
          "--leakage", str(tmp_path / "audit"), "--workdir", str(server.workdir), "--out", str(out)])  # fmt: skip
    cert = json.loads(out.read_text())
    assert cert["leakage"]["all_copies_with_base"] == result["client_view"]["all_copies_with_base"]
    assert cert["transcript"]["head"] == (
        __import__("hashlib")
        .sha256((server.workdir / "audit.log").read_bytes().split(b"\n")[-2])
        .hexdigest()
    )
    # an audit of another job is not certified beside this workdir
    other = json.loads((tmp_path / "audit" / "leakage.json").read_text())
    other["job_id"] = "0123456789abcdef"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "leakage.json").write_text(json.dumps(other))
    assert main(["certify", "--eval", str(tmp_path / "e.json"), "--original", str(tmp_path / "o.json"),
                 "--leakage", str(tmp_path / "other"), "--workdir", str(server.workdir),
                 "--out", str(tmp_path / "c2.json")]) == 2  # fmt: skip
    assert "the audit is of job '0123456789abcdef'" in capsys.readouterr().err


def test_audit_refuses_a_round_never_published(tofu_world, tmp_path, capsys):
    from toolkit import publish_job as publish

    server, _ = publish(tofu_world, tmp_path)
    code = main(["privacy", "audit", "--workdir", str(server.workdir), "--round", "3",
                 "--out", str(tmp_path / "a")])  # fmt: skip
    assert code == 2 and "round 3 was not published" in capsys.readouterr().err
    code = main(["privacy", "audit", "--workdir", str(server.workdir), "--round", "0",
                 "--out", str(tmp_path / "a")])  # fmt: skip
    assert code == 2 and "round 0 was not published" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("unlearned", "extra", "message"),
    [
        (_log(5.0, 0.5, 0.6), [], r"forget_quality = 5\.0 is outside \[0, 1\]"),
        (_log(True, 0.5, 0.6), [], "forget_quality is bool"),
        (_log(0.4, 0.5, "0.6"), [], "model_utility is str"),
        (_log(0.4, 0.5, [0.6]), [], "model_utility is list"),
        (_log(0.4, 0.5, -0.1), [], r"model_utility = -0\.1 is outside"),
        (_log(0.4, 0.5, 0.6), ["--epsilon", "nan", "--delta", "1e-5"], "--epsilon nan"),
        (_log(0.4, 0.5, 0.6), ["--delta", "1e-5"], "--epsilon and --delta go together"),
        (_log(0.4, 0.5, 0.6), ["--epsilon", "8", "--delta", "2"], "--delta 2.0"),
        (_log(1e-20, 1.0, 0.62), [], "the same as the original's"),
    ],
)
def test_certify_refuses_impossible_or_mistyped_values(tmp_path, capsys, unlearned, extra, message):
    u, o = tmp_path / "u.json", tmp_path / "o.json"
    u.write_text(json.dumps(unlearned))
    o.write_text(json.dumps(_log(1e-20, 1.0, 0.62)))
    out = tmp_path / "certificate.json"
    assert main(["certify", "--eval", str(u), "--original", str(o), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and __import__("re").search(message, err), err
    assert not out.exists()


def test_certify_refuses_infinity_and_one_file_as_both(tmp_path, capsys):
    u = tmp_path / "u.json"
    u.write_text('{"forget_quality": {"agg_value": 0.4}, "model_utility": {"agg_value": Infinity}}')
    o = tmp_path / "o.json"
    o.write_text(json.dumps(_log(1e-20, 1.0, 0.62)))
    assert (
        main(["certify", "--eval", str(u), "--original", str(o), "--out", str(tmp_path / "c")]) == 2
    )
    assert "model_utility = inf is outside" in capsys.readouterr().err
    assert (
        main(["certify", "--eval", str(o), "--original", str(o), "--out", str(tmp_path / "c")]) == 2
    )
    assert "the same as the original's" in capsys.readouterr().err


def test_the_audit_refuses_inputs_that_do_not_belong_together(round1, tofu_world, tmp_path, capsys):
    """Another job's copies, one update of two, an empty or partial copies folder, a missing
    update file, a negative limit: one line each, exit 2, and the workdir untouched."""
    from toolkit import publish_job, snapshot

    server, copies, deltas = round1
    _, other_copies = publish_job(tofu_world, tmp_path / "other")
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial").mkdir()
    shutil.copytree(copies[0], tmp_path / "partial" / copies[0].name)
    base = ["privacy", "audit", "--workdir", str(server.workdir), "--round", "1",
            "--out", str(tmp_path / "a")]  # fmt: skip
    cases = [
        (["--copies", str(other_copies[0].parent)], "a copy of job"),
        (["--copies", str(tmp_path / "empty")], "no copy-* folders to audit"),
        (["--copies", str(tmp_path / "partial")], "1 of the round's 2 copies"),
        (["--copies", str(copies[0].parent), "--deltas", str(deltas[0])], "missing update for"),
        (
            [
                "--copies",
                str(copies[0].parent),
                "--deltas",
                str(tmp_path / "nope.safetensors"),
                str(deltas[1]),
            ],
            "nope.safetensors",
        ),
        (["--copies", str(copies[0].parent), "--limit", "-5"], "limit=-5"),
    ]
    before = snapshot(server.workdir)
    capsys.readouterr()  # the set-up's log lines
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
    assert snapshot(server.workdir) == before
    assert not (tmp_path / "a").exists()

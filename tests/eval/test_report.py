"""Reports: tables and plots from report.json; the HTML renders plots in a real headless browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from mpu.cli import main
from mpu.errors import DataError
from mpu.eval.report import render_report

METHODS = ("GradAscent", "NPO")


def _run_dir(path, kappa: float, seed: int):
    rng = np.random.default_rng(seed)
    runs = [
        {"method": "", "variant": "target", "m": None, "kappa": None,
         "summary": {"forget_quality": 1e-12, "model_utility": 0.61, "privleak": -98.0}},
        {"method": "", "variant": "retain", "m": None, "kappa": None,
         "summary": {"forget_quality": 1.0, "model_utility": 0.6, "privleak": 0.0}},
    ]  # fmt: skip
    for method in METHODS:
        for variant in ("clean", "noised", "mpu"):
            runs.append(
                {
                    "method": method,
                    "variant": variant,
                    "m": 4,
                    "kappa": kappa,
                    "summary": {
                        "forget_quality": float(10 ** -rng.uniform(0, 6)),
                        "model_utility": float(rng.uniform(0.3, 0.6)),
                        "forget_Q_A_ROUGE": float(rng.uniform(0, 1)),
                        "privleak": float(rng.uniform(-50, 10)),
                        "extraction_strength": None,
                    },
                    "eval_file": f"{method}/{variant}/TOFU_EVAL.json",
                }
            )
    path.mkdir(parents=True, exist_ok=True)
    report = {"schema": "mpu-report/1", "benchmark": "tofu", "title": "TOFU forget10 <tiny>",
              "config": {"kappa": kappa, "m": 4}, "runs": runs}  # fmt: skip
    (path / "report.json").write_text(json.dumps(report))
    return path, report


def test_single_run_dir_report_contents(tmp_path):
    d, report = _run_dir(tmp_path / "run", 0.01, 0)
    md_path, html_path = render_report([d])
    assert md_path == d / "report.md" and html_path == d / "report.html"
    md = md_path.read_text()
    # one table row per run, values formatted from the summaries
    assert md.count("\n| GradAscent |") == 3 and md.count("\n| — | target |") == 1
    npo_mpu = next(r for r in report["runs"] if r["method"] == "NPO" and r["variant"] == "mpu")
    assert f"{npo_mpu['summary']['model_utility']:.4f}" in md
    assert "![" in md and (d / "bars.png").is_file() and (d / "fq_vs_mu.png").is_file()
    assert not (d / "sweep_kappa.png").exists()  # a single κ: no sweep plot
    page = html_path.read_text()
    assert "&lt;tiny&gt;" in page  # escaped title
    assert not re.search(r"(src|href)=\"(http|//)", page)  # self-contained
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 2
    assert all(base64.b64decode(p)[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_sweep_over_kappa_combines_run_dirs(tmp_path, capsys):
    dirs = [str(_run_dir(tmp_path / f"k{k}", k, i)[0]) for i, k in enumerate((0.001, 0.01, 0.1))]
    out = tmp_path / "combined"
    assert main(["report", *dirs, "--out", str(out)]) == 0
    assert (out / "sweep_kappa.png").is_file()
    assert "sweep_kappa" in (out / "report.html").read_text()
    assert (out / "report.md").read_text().count("\n| NPO | mpu |") == 3


def test_bad_run_dirs(tmp_path, capsys):
    with pytest.raises(DataError, match=r"report.json: not found"):
        render_report([tmp_path])
    (tmp_path / "report.json").write_text(json.dumps({"schema": "other", "runs": []}))
    with pytest.raises(DataError, match="schema"):
        render_report([tmp_path])
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.slow
def test_html_plots_render_in_headless_browser(tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary found (install Debian `chromium` to run this test)")
    import matplotlib.image as mpimg

    d, _ = _run_dir(tmp_path / "run", 0.01, 0)
    _, html_path = render_report([d])
    shot = tmp_path / "shot.png"
    profile = tmp_path / "profile"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,1600",
        html_path.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"chromium wrote no screenshot: {proc.stderr[-2000:]}"
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    # plot region (below the title): many distinct colours, and the variant colours are drawn
    region = (img[120:1000] * 255).round().astype(int)
    colours = {tuple(c) for c in region.reshape(-1, 3)[::7]}
    assert len(colours) > 200, f"only {len(colours)} distinct colours: plots did not render"
    for hex_colour in ("#1f77b4", "#ff7f0e", "#d62728"):  # clean, noised, MPU bars
        rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        hits = (np.abs(region - rgb).sum(-1) <= 6).sum()
        assert hits > 200, f"bar colour {hex_colour} not visible in the screenshot ({hits} px)"

"""Issue 3, must-show 6 and the CLI contract: a whole round through `mpu …` commands, then a
search for every secret (key, α, derived seeds) in everything the client or a log could see."""

import json
import logging
import stat

import pytest

from mpu.cli import main
from mpu.errors import MPUError
from mpu.protocol.rng import SecretStreams
from mpu.server.job import Server
from mpu.server.state import load_state
from toolkit import build_pair, family_configs, write_delta


def _secret_strings(workdir):
    state = load_state(workdir)
    strings = {state.key_hex, state.key_hex[:16]}
    for alphas in state.alphas.values():
        for a in alphas:
            strings |= {repr(a), f"{a:.6f}", f"{a:.4g}"}
    streams = SecretStreams(state.key)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        for j in range(2):
            strings.add(str(streams.seed(1, "noise", name, j)))
    for k in (1, 2):
        for layer in (0, 1):
            strings.add(str(streams.seed(1, "T", k, layer)))
    for records in state.copies.values():  # the copy id → k map must not leak either
        for r in records:
            strings.add(f'"k": {r["k"]}')
    return strings


def test_round_through_cli_leaks_no_secret(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    model, base = build_pair(family_configs()["qwen3"], tmp_path / "m")
    w, pub = tmp_path / "w", tmp_path / "pub"
    assert (
        main(
            [
                "server",
                "init",
                "--model",
                str(model),
                "--base",
                str(base),
                "--workdir",
                str(w),
                "--copies",
                "2",
                "--kappa",
                "0.02",
                "--alphas",
                "random",
            ]
        )
        == 0
    )
    assert main(["server", "publish", "--workdir", str(w), "--out", str(pub), "--quiet"]) == 0
    deltas = []
    for i in (1, 2):
        delta = tmp_path / f"delta-{i}.safetensors"
        assert (
            main(
                [
                    "client",
                    "diff",
                    "--before",
                    str(pub / f"copy-{i}"),
                    "--after",
                    str(pub / f"copy-{i}"),
                    "--out",
                    str(delta),
                ]
            )
            == 0
        )
        deltas.append(delta)
    # a refused command's message is client-visible too
    assert main(["server", "aggregate", "--workdir", str(w), str(deltas[0])]) == 2
    assert main(["server", "aggregate", "--workdir", str(w), "--quiet", *map(str, deltas)]) == 0
    assert main(["server", "status", "--workdir", str(w)]) == 0
    assert main(["server", "export", "--workdir", str(w), "--out", str(tmp_path / "final")]) == 0
    assert Server(w).round == 2 and (tmp_path / "final" / "model.safetensors").is_file()

    out = capsys.readouterr()
    visible_text = out.out + out.err + caplog.text + (w / "server.log").read_text()
    client_files = [
        p for p in [*pub.rglob("*"), *deltas, *(tmp_path / "final").rglob("*")] if p.is_file()
    ]
    secrets = _secret_strings(w)
    assert len(secrets) > 10
    for secret in secrets:
        assert secret not in visible_text, f"secret {secret!r} printed or logged"
        for path in client_files:
            assert secret.encode() not in path.read_bytes(), f"secret {secret!r} in {path}"
    ticket = json.loads((pub / "copy-1" / "mpu-ticket.json").read_text())
    assert set(ticket) == {
        "format",
        "schema",
        "job_id",
        "round",
        "copy_id",
        "weights_sha256",
        "tag",
    }

    assert stat.S_IMODE((w / "state.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(w.stat().st_mode) == 0o700


def test_error_messages_hide_the_key(job, tmp_path):
    server, copies, *_ = job
    key = load_state(server.workdir).key_hex
    with pytest.raises(MPUError) as info:
        server.aggregate([write_delta(copies[0], tmp_path / "a.safetensors")], progress=False)
    assert key not in str(info.value) and key not in repr(server.state)


def test_state_readable_by_others_is_refused(job):
    server, *_ = job
    (server.workdir / "state.json").chmod(0o644)
    with pytest.raises(MPUError, match="readable by others"):
        Server(server.workdir)


def test_unknown_config_key_is_an_error(tmp_path):
    model, base = build_pair(family_configs()["llama"], tmp_path)
    code = main(
        [
            "server",
            "init",
            "--model",
            str(model),
            "--base",
            str(base),
            "--workdir",
            str(tmp_path / "w"),
            "kapa=0.1",
        ]
    )
    assert code == 2 and not (tmp_path / "w").exists()

"""Settings a careless operator writes: given twice, a recipe that is not YAML or not a mapping,
a server step size no one means — each refused in one line naming the setting or the file."""

from __future__ import annotations

import pytest

from mpu.cli import main
from mpu.config import load_config
from mpu.errors import ConfigError
from mpu.server.config import JobConfig


@pytest.mark.parametrize(
    "overrides",
    [["kappa=0.01", "kappa=0.5"], ["copies=3", "copies=2"], ["alphas=auto", "alphas=random"]],
)
def test_a_setting_given_twice_with_two_values_is_refused(overrides):
    key = overrides[0].split("=")[0]
    with pytest.raises(ConfigError, match=f"{key} is given twice"):
        load_config(JobConfig, overrides=overrides)


def test_the_same_setting_repeated_identically_is_one_setting():
    assert load_config(JobConfig, overrides=["kappa=0.2", "kappa=0.2"]).kappa == 0.2


def test_a_flag_and_a_setting_that_disagree_are_refused(tmp_path, capsys):
    code = main(["server", "init", "--model", str(tmp_path), "--base", str(tmp_path),
                 "--workdir", str(tmp_path / "w"), "--copies", "2", "copies=3"])  # fmt: skip
    assert code == 2 and "copies is given twice" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kappa: [0.1\n", "not a readable YAML recipe"),
        ("- kappa: 0.1\n", "a recipe is a mapping of settings (key: value), not a list"),
        (b"kappa: \xff\xfe\n", "not a readable YAML recipe"),
    ],
)
def test_a_recipe_that_is_not_a_yaml_mapping_is_refused_naming_it(tmp_path, text, message):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as err:
        load_config(JobConfig, yaml_path=path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_server_step_size_beyond_ten_is_refused():
    with pytest.raises(ConfigError, match="server_lr"):
        JobConfig(server_lr=1e6)
    assert JobConfig(server_lr=2.0).server_lr == 2.0


def test_copies_are_never_published_into_the_server_s_own_files(tmp_path):
    from mpu.server.job import Server
    from toolkit import build_pair, family_configs, snapshot

    model, base = build_pair(family_configs()["llama"], tmp_path)
    server = Server.init(model, base, tmp_path / "w", JobConfig(kappa=0.01, copies=2, gate=False))
    before = snapshot(server.workdir)
    for out in ("w", "w/rounds", "w/rounds/r001/copies", "w/rounds/r002", "w/staging/x"):
        with pytest.raises(ConfigError, match="inside the server's own files"):
            server.publish(tmp_path / out, progress=False)
    assert snapshot(server.workdir) == before


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--rounds", "0", "--rounds 0: must be an integer ≥ 1"),
     ("--retries", "-1", "--retries -1: must be an integer ≥ 0"),
     ("--round-timeout", "-5", "--round-timeout"),
     ("--join-timeout", "nan", "--join-timeout")],
)  # fmt: skip
def test_serve_refuses_bad_flags_before_anything_starts(tmp_path, capsys, flag, value, message):
    code = main(["serve", "--workdir", str(tmp_path / "w"), "--insecure", flag, value])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "w").exists()

"""Configuration files: merge order, clear errors, CRIU lookup."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ssi import config


def test_defaults_then_file_then_conf_d_then_flags(tmp_path: Path) -> None:
    main = tmp_path / "ssi.toml"
    main.write_text(
        '[node]\nname = "alpha"\nport = 7100\n[cluster]\nheartbeat_timeout = 9\n'
    )
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-port.toml").write_text("[node]\nport = 7200\n")
    (tmp_path / "conf.d" / "20-admin.toml").write_text(
        '[cluster]\nadmin_group = "ops"\n'
    )
    cfg = config.load(main, {"node": {"name": "beta"}})
    assert cfg.node.name == "beta" and cfg.node.port == 7200
    assert cfg.cluster.heartbeat_timeout == 9 and cfg.cluster.admin_group == "ops"
    assert cfg.cluster.heartbeat_interval == 1.0
    assert cfg.socket_path == Path("/run/ssi/ssid.sock")


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert config.load(tmp_path / "none.toml").node.port == 7070


@pytest.mark.parametrize(
    "text, words",
    [
        ("[node]\nprot = 1\n", ["prot"]),
        ('[node]\nport = "x"\n', ["port", "int"]),
        ("[node\n", ["ssi.toml"]),
        ("[nodes]\nport = 1\n", ["nodes"]),
    ],
)
def test_bad_settings_name_the_file_and_key(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    f = tmp_path / "ssi.toml"
    f.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(f)
    assert str(f) in str(info.value)
    for w in words:
        assert w in str(info.value)


def test_criu_is_found_through_configuration(tmp_path: Path) -> None:
    fake = tmp_path / "my-criu"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    f = tmp_path / "ssi.toml"
    f.write_text(f'[criu]\npath = "{fake}"\n')
    assert config.resolve_criu(config.load(f)) == str(fake)
    f.write_text('[criu]\npath = "no-such-criu-here"\n')
    with pytest.raises(config.CriuNotFound, match="make setup"):
        config.resolve_criu(config.load(f))
    f.write_text("")  # the default finds the one `make setup` put in the venv
    assert config.resolve_criu(config.load(f)) == str(Path(sys.prefix) / "bin" / "criu")


def test_clients_find_local_clusters_where_they_live() -> None:
    from ssi import client
    from ssi.local import RUN_DIR

    assert client.LOCAL_RUN_DIR == RUN_DIR

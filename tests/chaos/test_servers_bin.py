"""Where the chaos harness finds PostgreSQL's server programs (tests/chaos/servers.py): the
version installed, whatever it is, and never a directory without initdb."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.servers import postgres_bin


def server(root: Path, version: str, *, initdb: bool = True) -> Path:
    bindir = root / version / "bin"
    bindir.mkdir(parents=True)
    if initdb:
        (bindir / "initdb").touch()
    return bindir


def pg_config(path: Path, bindir: Path) -> None:
    """A `pg_config` on PATH that names `bindir`."""
    path.mkdir()
    script = path / "pg_config"
    script.write_text(f"#!/bin/sh\necho {bindir}\n")
    script.chmod(0o755)


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CHAOS_PG_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))  # no pg_config unless a test makes one
    return tmp_path / "postgresql"


def test_the_newest_version_with_initdb(root: Path) -> None:
    server(root, "9.6")
    newest = server(root, "15")
    server(root, "16", initdb=False)  # a client package's directory: pg_config, psql
    assert postgres_bin(root) == newest


def test_pg_config_when_it_names_a_server(root: Path, tmp_path: Path) -> None:
    server(root, "16")
    chosen = server(root, "15")
    pg_config(tmp_path / "path", chosen)
    assert postgres_bin(root) == chosen


def test_not_pg_config_naming_a_directory_without_initdb(root: Path, tmp_path: Path) -> None:
    installed = server(root, "15")
    pg_config(tmp_path / "path", server(root, "17", initdb=False))
    assert postgres_bin(root) == installed


def test_chaos_pg_bin_wins(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server(root, "15")
    monkeypatch.setenv("CHAOS_PG_BIN", "/opt/pg/bin")
    assert postgres_bin(root) == Path("/opt/pg/bin")


def test_no_server_names_a_directory_without_initdb(root: Path) -> None:
    assert not (postgres_bin(root) / "initdb").exists()

"""deploy/systemd: units that parse (`systemd-analyze verify` where systemd is installed, a
structural check always), run real `saga` subcommands, and are hardened."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy import code_facts as facts
from tests.deploy import manifests as m

UNITS = facts.DEPLOY / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))
ENV_FILE = "/etc/saga/saga.env"
SAGA = "/opt/saga/bin/saga"
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


def parse(path: Path) -> configparser.RawConfigParser:
    # strict=False: systemd allows a key more than once (SystemCallFilter=); keep the last.
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def exec_args(unit: configparser.RawConfigParser) -> list[str]:
    line = unit["Service"]["ExecStart"].split()
    assert line[0] == SAGA, "the `saga` script of the install's virtualenv"
    return line[1:]


def test_the_expected_units_exist() -> None:
    assert {p.name for p in SERVICES} == {
        "saga-orchestrator@.service",
        "saga-worker.service",
        "saga-migrate.service",
    }


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_unit_runs_a_real_subcommand(path: Path) -> None:
    unit = parse(path)
    assert m.saga_command_problems(exec_args(unit)) == []
    assert unit["Service"]["EnvironmentFile"] == ENV_FILE
    assert unit["Service"]["User"] == "saga"


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_unit_is_hardened(path: Path) -> None:
    service = parse(path)["Service"]
    assert {k: service.get(k) for k in HARDENING} == HARDENING


def test_the_orchestrator_is_a_template_with_a_port_per_replica() -> None:
    unit = parse(UNITS / "saga-orchestrator@.service")
    assert exec_args(unit) == ["run"]
    bind = unit["Service"]["Environment"].removeprefix("SAGA_HTTP_BIND=")
    assert bind == "127.0.0.1:%i"
    assert {"saga-migrate.service"} <= set(unit["Unit"]["Requires"].split())
    assert "saga-migrate.service" in unit["Unit"]["After"].split()
    assert parse(UNITS / "saga-migrate.service")["Service"]["Type"] == "oneshot"


def test_the_environment_file_example_sets_only_real_settings() -> None:
    lines = (UNITS / "saga.env.example").read_text().splitlines()
    names = [ln.split("=", 1)[0] for ln in lines if ln.strip() and not ln.startswith("#")]
    assert m.unknown_env(names) == []
    assert m.unknown_env([*names, "SAGA_HTTP_BND"]) != []
    # EnvironmentFile= wins over Environment=: a bind there would put every replica on one port.
    assert "SAGA_HTTP_BIND" not in names


def verify_problems(folder: Path, *, replace: tuple[str, str] = ("", "")) -> str:
    """`systemd-analyze verify` on a copy whose paths point at this checkout's install (and
    with `replace` applied); it exits 0 on unknown keys, so anything it prints is a problem."""
    shutil.copytree(UNITS, folder)
    saga = Path(sys.executable).with_name("saga")
    units = []
    for path in sorted(folder.glob("*.service")) + sorted(folder.glob("*.target")):
        text = path.read_text()
        if replace[0]:
            text = text.replace(*replace)
        text = text.replace(SAGA, str(saga)).replace(ENV_FILE, str(folder / "saga.env.example"))
        if path.name == "saga-orchestrator@.service":
            path = folder / "saga-orchestrator@8080.service"  # noqa: PLW2901 - an instance
        path.write_text(text)
        units.append(str(path))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (result.stdout + result.stderr).strip() or ("" if result.returncode == 0 else "failed")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_analyze_verify_accepts_every_unit(tmp_path: Path) -> None:
    assert verify_problems(tmp_path / "ok") == ""
    typo = ("ProtectClock=yes", "ProtectClok=yes")
    assert "ProtectClok" in verify_problems(tmp_path / "typo", replace=typo)
    missing = (f"{SAGA} ", "/nonexistent/saga ")
    assert "not executable" in verify_problems(tmp_path / "missing", replace=missing)

"""The systemd unit of docs/operating.md stays true to the code: its ``ExecStart`` parses with ``ai4all
peer``'s own flags (and their checks), it keeps the options the page promises (user, data dir, restart
policy, memory bounds, hardening), and ``systemd-analyze verify`` accepts it where systemd is installed.
The README's command summary names the three operator commands."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from python_peer import model_trust
from python_peer.cli import build_parser
from python_peer.core.publisher_trust import ALLOW_UNSIGNED_ENV, TrustPolicy
from python_peer.peer_cli import peer_options

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operating.md"


def unit_text() -> str:
    blocks = re.findall(r"```ini\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/operating.md holds one ini block: the unit"
    return str(blocks[0])


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_exec_start_parses_with_the_peers_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_UNSIGNED_ENV, raising=False)  # the tests' default; a real unit has none
    unit = settings(unit_text())
    argv = shlex.split(unit["ExecStart"][0])
    assert argv[0].endswith("/ai4all") and argv[1] == "peer"
    args = build_parser().parse_args(argv[1:])
    checked: list[tuple[Path, TrustPolicy]] = []  # the model is not on this machine: record its check
    monkeypatch.setattr(model_trust, "check_trusted_model", lambda d, p: checked.append((Path(d), p)))
    options = peer_options(args)  # the same checks `ai4all peer` makes before anything starts
    ((model, policy),) = checked
    assert model == options.model_dir and not policy.allow_unsigned  # a signed model, one publisher
    assert policy.publishers == frozenset({"5ca1ab1e" * 8})
    assert options.data_dir is not None and str(options.data_dir) == "/var/lib/" + unit["StateDirectory"][0]
    assert options.model_dir.is_relative_to(options.data_dir)  # readable under ProtectSystem=strict
    assert options.memory_budget_bytes == int(1.5 * 2**30)
    assert unit["Environment"] == [f"AI4ALL_DATA_DIR={options.data_dir}"]  # `ai4all status` finds it
    memory_max = unit["MemoryMax"][0]
    assert memory_max.endswith("G") and int(memory_max[:-1]) * 2**30 > options.memory_budget_bytes


def test_the_promised_options_are_there() -> None:
    unit = settings(unit_text())
    expected = {
        "User": "ai4all",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectoryMode": "0700",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    families = unit["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} == set(families)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    path = tmp_path / "ai4all-peer.service"
    # systemd-analyze wants the binary to exist: point ExecStart at one that does, flags unchanged
    text = re.sub(r"ExecStart=\S+", "ExecStart=/bin/true", unit_text())
    path.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "ai4all-peer.service" in line and "network-online.target" not in line
    ]
    assert problems == [], result.stderr


def test_readme_names_the_operator_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    for command in ("ai4all status", "ai4all benchmark", "ai4all calibrate"):
        assert command in readme
    assert "docs/operating.md" in readme

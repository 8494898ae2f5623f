"""The ICE flags of ``ai4all peer`` and ``ai4all chat`` (``python_peer/core/ice.py``): what they build
(the native ``TransportConfig``, the pages' ``ice`` entry) and what they refuse, with the reason."""

from __future__ import annotations

import argparse

import pytest

from python_peer.cli import build_parser
from python_peer.core.errors import CommandError
from python_peer.core.ice import IceServer, IceSettings, ice_settings
from python_peer.transport import TransportConfig
from tests.support.procs import run_cli


def _parse(command: str, *flags: str) -> argparse.Namespace:
    base = {
        "peer": ["peer", "--signal", "ws://127.0.0.1:1", "--model", "m"],
        "chat": ["chat", "hi", "--model", "m"],
        "signal": ["signal", "--port", "1"],
    }[command]
    return build_parser().parse_args([*base, *flags])


@pytest.mark.parametrize("command", ["peer", "chat"])
def test_without_flags_the_transport_stays_on_loopback(command: str) -> None:
    config = TransportConfig.from_ice(ice_settings(_parse(command)))
    assert config == TransportConfig()
    assert config.ice_servers == () and config.ice_addresses == ("127.0.0.1",)
    assert config.remote_addresses == ("127.0.0.1",)


@pytest.mark.parametrize("command", ["peer", "chat"])
def test_flags_build_servers_and_lift_the_loopback_confinement(command: str) -> None:
    args = _parse(
        command,
        *("--ice-server", "stun:stun.example.org:3478"),
        *("--ice-server", "turn:192.0.2.7?transport=tcp"),
        *("--ice-server", "turns:turn.example.org:5349"),
        *("--ice-username", "alice", "--ice-credential", "s3cret pass"),
        "--ice-any-address",
    )
    config = TransportConfig.from_ice(ice_settings(args))
    assert config.ice_servers == (
        IceServer("stun:stun.example.org:3478"),
        IceServer("turn:192.0.2.7?transport=tcp", "alice", "s3cret pass"),
        IceServer("turns:turn.example.org:5349", "alice", "s3cret pass"),
    )
    assert config.ice_addresses is None and config.remote_addresses is None
    # Servers alone keep loopback confinement; a repeated URL is given once.
    args = _parse(command, "--ice-server", "stun:10.0.0.1", "--ice-server", "stun:10.0.0.1")
    config = TransportConfig.from_ice(ice_settings(args))
    assert config.ice_servers == (IceServer("stun:10.0.0.1"),) and config.ice_addresses == ("127.0.0.1",)


def test_page_config_shape() -> None:
    assert IceSettings().page_config() == {"servers": [], "loopback_only": True}
    assert IceSettings(("stuns:s.example", "turn:t.example"), "u", "c", False).page_config() == {
        "servers": [
            {"urls": ["stuns:s.example"]},
            {"urls": ["turn:t.example"], "username": "u", "credential": "c"},
        ],
        "loopback_only": False,
    }


BAD = [
    (["--ice-server", "http://stun.example.org"], "is not a STUN or TURN URL"),
    (["--ice-server", "stun://stun.example.org"], "is not a STUN or TURN URL"),
    (["--ice-server", "stun:"], "is not a STUN or TURN URL"),
    (["--ice-server", "stun:[::1]:3478"], "is not a STUN or TURN URL"),
    (["--ice-server", "stun:host name"], "is not a STUN or TURN URL"),
    (["--ice-server", "stun:a.example:99999"], "port 99999 is not in 1..65535"),
    (["--ice-server", "stun:a.example:0"], "port 0 is not in 1..65535"),
    (["--ice-server", "stun:a.example?transport=udp"], "?transport= is for turn: and turns: URLs only"),
    (["--ice-server", "turn:a.example?transport=sctp"], "is not a STUN or TURN URL"),
    (
        ["--ice-server", "turns:a.example?transport=udp", "--ice-username", "u", "--ice-credential", "c"],
        "tcp only",
    ),
    (["--ice-server", "turn:a.example"], "needs --ice-username and --ice-credential"),
    (["--ice-server", "turn:a.example", "--ice-username", "u"], "needs --ice-username and --ice-credential"),
    (
        ["--ice-server", "turn:a.example", "--ice-credential", "c"],
        "needs --ice-username and --ice-credential",
    ),
    (["--ice-server", "stun:a.example", "--ice-username", "u"], "no --ice-server names one"),
    (["--ice-username", "u", "--ice-credential", "c"], "no --ice-server names one"),
    (["--ice-server", "turn:a.example", "--ice-username", "", "--ice-credential", "c"], "printable ASCII"),
    (
        ["--ice-server", "turn:a.example", "--ice-username", "u", "--ice-credential", "x\ny"],
        "printable ASCII",
    ),
    (
        ["--ice-server", "turn:a.example", "--ice-username", "u", "--ice-credential", "c" * 513],
        "printable ASCII",
    ),
    ([f"--ice-server=stun:h{i}.example" for i in range(17)], "at most 16"),
]


@pytest.mark.parametrize(("flags", "reason"), BAD)
def test_bad_flags_are_refused_with_the_reason(flags: list[str], reason: str) -> None:
    for command in ("peer", "chat"):
        with pytest.raises(CommandError) as caught:
            ice_settings(_parse(command, *flags))
        assert reason in str(caught.value), (command, str(caught.value))


def test_the_native_stack_refuses_stuns_which_it_would_drop() -> None:
    args = _parse("peer", "--ice-server", "stuns:stun.example.org")
    with pytest.raises(CommandError, match="no STUN over TLS"):
        ice_settings(args)
    assert ice_settings(args, native=False).urls == ("stuns:stun.example.org",)  # browsers have it


@pytest.mark.parametrize(
    "command",
    [
        ["peer", "--signal", "ws://127.0.0.1:1", "--model", "/nonexistent"],
        ["chat", "hi", "--model", "/nonexistent", "--signal", "ws://127.0.0.1:1"],
    ],
)
def test_the_commands_refuse_bad_flags_before_anything_loads(command: list[str]) -> None:
    result = run_cli([*command, "--ice-server", "turn:turn.example.org"], timeout=60)
    assert result.returncode == 1, result.stderr
    stderr = result.stderr.strip()
    assert stderr.startswith(f"ai4all {command[0]}: error: a turn: or turns: server needs"), stderr
    assert "Traceback" not in stderr and len(stderr.splitlines()) == 1

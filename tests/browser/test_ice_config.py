"""The page configuration's ``ice`` in Chromium (``web/src/transport/peer.js``): ``transportConfigFor``
turns it into a BrowserTransport config, the links' RTCPeerConnections carry its STUN/TURN servers on
both sides (offering and answering, the embed relay's page side included), and ``loopback_only: false``
leaves candidates as gathered, where the default rewrites them to 127.0.0.1. A BrowserNode and the
relay refuse a malformed ``ice``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.browser import Harness, script

pytestmark = pytest.mark.browser

SERVERS = [
    {"urls": ["stun:192.0.2.1:3478"]},
    {"urls": ["turn:192.0.2.2?transport=tcp"], "username": "mesh", "credential": "hunter2"},
]

SETUP_JS = script("ice_config/setup")


@pytest.fixture(scope="module")
def page(harness: Harness) -> Iterator[Harness]:
    assert harness.page.evaluate(SETUP_JS) is True
    yield harness
    assert harness.take_errors() == []


def test_transport_config_for_page_configs(page: Harness) -> None:
    got = page.page.evaluate(
        script("ice_config/transport_configs"),
        SERVERS,
    )
    assert got["old"] == {"iceServers": [], "remoteAddresses": ["127.0.0.1"], "localAddress": "127.0.0.1"}
    assert got["loopback"] == {
        "iceServers": SERVERS,
        "remoteAddresses": ["127.0.0.1"],
        "localAddress": "127.0.0.1",
    }
    assert got["any"] == {"iceServers": [], "remoteAddresses": None, "localAddress": None}
    assert got["single"]["iceServers"] == [{"urls": ["stuns:s.example"]}]


@pytest.mark.parametrize(
    ("ice", "reason"),
    [
        (None, "must be {servers: [...], loopback_only: true|false}"),
        ({"servers": []}, "must be {servers: [...], loopback_only: true|false}"),
        ({"servers": [], "loopback_only": "no"}, "must be {servers: [...], loopback_only: true|false}"),
        ({"servers": "stun:a", "loopback_only": True}, "must be a list of at most 16"),
        ({"servers": [{"urls": ["stun:a"]}] * 17, "loopback_only": True}, "must be a list of at most 16"),
        ({"servers": ["stun:a"], "loopback_only": True}, "ICE server 0 is not an object"),
        ({"servers": [{"urls": []}], "loopback_only": True}, "needs urls"),
        ({"servers": [{"urls": ["http://a"]}], "loopback_only": True}, "is not a STUN or TURN URL"),
        ({"servers": [{"urls": ["stun://a"]}], "loopback_only": True}, "is not a STUN or TURN URL"),
        ({"servers": [{"urls": ["turn:a"]}], "loopback_only": True}, "it needs a username and a credential"),
        ({"servers": [{"urls": ["turn:a"], "username": "u"}], "loopback_only": True}, "needs a username and"),
        (
            {"servers": [{"urls": ["turn:a"], "username": "u", "credential": 5}], "loopback_only": True},
            "credential must be 1-512 printable characters",
        ),
        ({"servers": [{"urls": ["stun:a"], "extra": 1}], "loopback_only": True}, "unknown keys"),
    ],
)
def test_malformed_ice_is_refused(page: Harness, ice: Any, reason: str) -> None:
    got = page.page.evaluate(
        script("ice_config/malformed_ice"),
        ice,
    )
    assert got[0].startswith("TransportError: ") and reason in got[0], got
    assert got[1].startswith("NodeError: ") and reason in got[1], got


def test_a_browser_node_hands_the_ice_settings_to_its_transport(page: Harness) -> None:
    got = page.page.evaluate(
        script("ice_config/node_ice_settings"),
        SERVERS,
    )
    assert got["old"] == {"iceServers": [], "remoteAddresses": ["127.0.0.1"], "localAddress": "127.0.0.1"}
    assert got["any"] == {"iceServers": SERVERS, "remoteAddresses": None, "localAddress": None}


def test_a_transport_refuses_bad_addresses_and_servers(page: Harness) -> None:
    got = page.page.evaluate(script("ice_config/bad_addresses"))
    assert all(line.startswith("TransportError: ") for line in got), got
    assert "needs a username and a credential" in got[0] and "localAddress must be null or an IPv4" in got[1]
    assert "remoteAddresses must be null or a list" in got[2] and "must be a list of at most 16" in got[3]


def test_both_sides_of_a_link_carry_the_servers(page: Harness) -> None:
    """The offering side's and the answering side's RTCPeerConnection, and the embed relay's page side."""
    got = page.page.evaluate(
        script("ice_config/link_servers"),
        SERVERS,
    )
    expected = [
        {"urls": ["stun:192.0.2.1:3478"], "username": "", "credential": ""},
        {"urls": ["turn:192.0.2.2?transport=tcp"], "username": "mesh", "credential": "hunter2"},
    ]

    def shape(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: s.get(k, "") for k in ("urls", "username", "credential")} for s in servers]

    assert shape(got["offered"]) == expected
    assert shape(got["answeredServers"]) == expected
    assert got["relayedServers"] is not None and shape(got["relayedServers"]) == expected


def test_loopback_only_false_keeps_candidates_as_gathered(page: Harness) -> None:
    """Two transports of one page link up over the machine's own interface addresses, not 127.0.0.1;
    with the default config the same link's candidates are all rewritten to 127.0.0.1."""
    got = page.page.evaluate(script("ice_config/candidates_as_gathered"))
    any_, loopback = got["any"], got["loopback"]
    assert any_["ok"] and loopback["ok"]
    offer, answer = any_["candidates"]
    assert offer and answer and "127.0.0.1" not in offer + answer, any_
    assert offer == any_["gathered"]  # sent as gathered: nothing rewritten or dropped
    assert any_["remote"] not in (None, "127.0.0.1"), any_
    assert loopback["candidates"][0] and set(loopback["candidates"][0] + loopback["candidates"][1]) == {
        "127.0.0.1"
    }
    assert loopback["remote"] == "127.0.0.1"

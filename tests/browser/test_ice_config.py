"""The page configuration's ``ice`` in Chromium (``web/src/transport/peer.js``): ``transportConfigFor``
turns it into a BrowserTransport config, the links' RTCPeerConnections carry its STUN/TURN servers on
both sides (offering and answering, the embed relay's page side included), and ``loopback_only: false``
leaves candidates as gathered, where the default rewrites them to 127.0.0.1. A BrowserNode and the
relay refuse a malformed ``ice``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import Harness

pytestmark = pytest.mark.browser

SERVERS = [
    {"urls": ["stun:192.0.2.1:3478"]},
    {"urls": ["turn:192.0.2.2?transport=tcp"], "username": "mesh", "credential": "hunter2"},
]

SETUP_JS = """async () => {
  window.P = await import('/web/src/transport/peer.js');
  window.N = await import('/web/src/node/node.js');
  window.R = await import('/web/src/embed/relay.js');
  window.quiet = { info() {}, warn() {} };
  return true;
}"""


@pytest.fixture(scope="module")
def page(harness: Harness) -> Iterator[Harness]:
    assert harness.page.evaluate(SETUP_JS) is True
    yield harness
    assert harness.take_errors() == []


def test_transport_config_for_page_configs(page: Harness) -> None:
    got = page.page.evaluate(
        """(servers) => {
          const out = {};
          out.old = P.transportConfigFor({ signal: ['ws://x'] });
          out.loopback = P.transportConfigFor({ ice: { servers, loopback_only: true } });
          out.any = P.transportConfigFor({ ice: { servers: [], loopback_only: false } });
          out.single = P.transportConfigFor({ ice: { servers: [{ urls: 'stuns:s.example' }], loopback_only: false } });
          return out;
        }""",
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
        """(ice) => {
          const results = [];
          const config = { signal: ['ws://127.0.0.1:1'], models: [{ name: 'm', base: '/m/' }],
                           ledger: { pow_bits: 4 }, python_core: '/py/', ice };
          try { P.transportConfigFor(config); results.push('accepted'); }
          catch (err) { results.push(`${err.name}: ${err.message}`); }
          try { new N.BrowserNode(config, { db: {}, log: quiet }); results.push('accepted'); }
          catch (err) { results.push(`${err.name}: ${err.message}`); }
          return results;
        }""",
        ice,
    )
    assert got[0].startswith("TransportError: ") and reason in got[0], got
    assert got[1].startswith("NodeError: ") and reason in got[1], got


def test_a_browser_node_hands_the_ice_settings_to_its_transport(page: Harness) -> None:
    got = page.page.evaluate(
        """(servers) => {
          const base = { signal: ['ws://127.0.0.1:1'], models: [{ name: 'm', base: '/m/' }],
                         ledger: { pow_bits: 4 }, python_core: '/py/' };
          const old = new N.BrowserNode(base, { db: {}, log: quiet }).transportConfig;
          const any = new N.BrowserNode({ ...base, ice: { servers, loopback_only: false } }, { db: {}, log: quiet }).transportConfig;
          return { old, any };
        }""",
        SERVERS,
    )
    assert got["old"] == {"iceServers": [], "remoteAddresses": ["127.0.0.1"], "localAddress": "127.0.0.1"}
    assert got["any"] == {"iceServers": SERVERS, "remoteAddresses": None, "localAddress": None}


def test_a_transport_refuses_bad_addresses_and_servers(page: Harness) -> None:
    got = page.page.evaluate(
        """() => {
          const hooks = { sendSignal: async () => {}, onFrame: () => {} };
          const out = [];
          for (const config of [{ iceServers: [{ urls: ['turn:a'] }] }, { localAddress: 'evil.example' },
                                { remoteAddresses: '127.0.0.1' }, { iceServers: null }]) {
            try { new P.BrowserTransport({ ...hooks, config: { ...config, log: quiet } }); out.push('accepted'); }
            catch (err) { out.push(`${err.name}: ${err.message}`); }
          }
          return out;
        }"""
    )
    assert all(line.startswith("TransportError: ") for line in got), got
    assert "needs a username and a credential" in got[0] and "localAddress must be null or an IPv4" in got[1]
    assert "remoteAddresses must be null or a list" in got[2] and "must be a list of at most 16" in got[3]


def test_both_sides_of_a_link_carry_the_servers(page: Harness) -> None:
    """The offering side's and the answering side's RTCPeerConnection, and the embed relay's page side."""
    got = page.page.evaluate(
        """async (servers) => {
          const config = { ...P.transportConfigFor({ ice: { servers, loopback_only: true } }), log: quiet };
          const never = () => new Promise(() => {});
          // Offering: the link exists (with its pc) as soon as connect() starts.
          const offering = new P.BrowserTransport({ sendSignal: never, onFrame: () => {}, config });
          const pending = offering.connect('b'.repeat(64), { timeoutMs: 30000 }).catch((err) => err.name);
          const offered = offering.links[0].pc.getConfiguration().iceServers;
          offering.close();
          // Answering: an offer from a plain RTCPeerConnection (loopback candidates, as a native peer's).
          const source = new RTCPeerConnection();
          source.createDataChannel('ai4all');
          await source.setLocalDescription(await source.createOffer());
          const sdp = P.rewriteLocalCandidates(source.localDescription.sdp, '127.0.0.1').sdp;
          const answering = new P.BrowserTransport({ sendSignal: never, onFrame: () => {}, config });
          const answered = answering.handleSignal({ sender: 'c'.repeat(64), payload: { kind: 'webrtc', type: 'offer', sdp, link: 'l1' } }).catch((err) => err.name);
          const answeredServers = answering.links[0].pc.getConfiguration().iceServers;
          answering.close();
          // The embed relay: the worker's hello carries the servers to the page's BrowserTransport.
          const channel = new MessageChannel();
          const host = new R.RelayHost(channel.port1, { log: quiet });
          const worker = new R.RelayTransport(channel.port2, { sendSignal: never, onFrame: () => {}, config: { ...config } });
          const relayed = worker.handleSignal({ sender: 'd'.repeat(64), payload: { kind: 'webrtc', type: 'offer', sdp, link: 'l2' } }).catch((err) => err.name);
          for (let i = 0; i < 100 && host.links.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
          const relayedServers = host.links.length ? host.links[0].pc.getConfiguration().iceServers : null;
          worker.close();
          host.close?.();
          source.close();
          void pending, answered, relayed; // closed: they fail in their own time, nobody waits
          return { offered, answeredServers, relayedServers };
        }""",
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
    got = page.page.evaluate(
        """async () => {
          async function link(pageConfig) {
            const config = { ...P.transportConfigFor(pageConfig), log: quiet };
            const sdps = [];
            /** @type {any} */ let a; /** @type {any} */ let b;
            a = new P.BrowserTransport({ config, onFrame: () => {}, sendSignal: async (to, payload) => {
              sdps.push(payload.sdp); await b.handleSignal({ sender: 'a'.repeat(64), payload }); } });
            b = new P.BrowserTransport({ config, onFrame: () => {}, sendSignal: async (to, payload) => {
              sdps.push(payload.sdp); await a.handleSignal({ sender: 'b'.repeat(64), payload }); } });
            try {
              const opened = await a.connect('b'.repeat(64), { timeoutMs: 15000 });
              const rtt = await opened.ping(5000);
              const stats = [...(await opened.pc.getStats()).values()];
              const pair = stats.find((s) => s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated);
              const remote = pair && stats.find((s) => s.id === pair.remoteCandidateId);
              const candidates = sdps.map((sdp) => sdp.split(/\\r?\\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.split(' ')[4]));
              return { ok: rtt >= 0, candidates, gathered: opened.gatheredCandidates.map((l) => l.split(' ')[4]), remote: remote?.address ?? null };
            } finally { a.close(); b.close(); }
          }
          return {
            any: await link({ ice: { servers: [], loopback_only: false } }),
            loopback: await link({}),
          };
        }"""
    )
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

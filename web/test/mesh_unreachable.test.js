// @ts-check
/**
 * Failover before the first token in the browser (src/client/mesh_client.js, session.js): a routed peer
 * that cannot be reached is a hop failure, routed around as the native client does
 * (tests/fast/test_unreachable.py). A peer stays listed for a while after it dies, so a new chat may be
 * routed to it: signaling refusing the offer (`unknown_peer`), an offer that no answer follows (the link
 * never opens), and a peer whose link opens but that never answers OPEN each cost one failover; the
 * peer is banned, the span goes through a spare, and the logits are the reference.
 *
 * The unreachable peers are reached through the real `BrowserTransport` (offer, signal, wait for the
 * answer and the channel) over in-memory RTCPeerConnections; the live ones over the fake links of
 * test/support/mesh_fakes.js.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { FrameType } from '../src/protocol/wire.js';
import { RemoteSignalingError } from '../src/signaling/messages.js';
import { BrowserTransport } from '../src/transport/peer.js';
import { FakeChannel, FakePeerConnection } from './fake_rtc.js';
import { CLIENT_CONFIG, FakeMesh, fakeClient, ones, quiet, referenceLogits, tokens } from './support/mesh_fakes.js';

/** @typedef {import('../src/client/mesh_client.js').MeshClient} MeshClient */

const FIRST = 'a'.repeat(64);
const DOOMED = 'e'.repeat(64);
const SPARE = 'b'.repeat(64);
const CONFIG = {
  ...CLIENT_CONFIG,
  requestTimeoutMs: 20_000,
  connectTimeoutMs: 400,
  openTimeoutMs: 400,
  closeTimeoutMs: 2_000,
  probeEveryMs: 100,
  probeTimeoutMs: 1_000,
  verifyAnswers: false, // the fake peers hold no keys; signed answers are tested in answers and hop tests
};

/** What `BrowserTransport.connect` uses of an RTCPeerConnection that `FakePeerConnection` lacks: the offerer's channel. */
class OfferingPeerConnection extends FakePeerConnection {
  /** @param {string} label */
  createDataChannel(label) {
    const channel = new FakeChannel();
    channel.label = label;
    return channel; // never opens: no answer ever completes this link
  }
}
/** @type {any} */ (globalThis).RTCPeerConnection = OfferingPeerConnection;

/**
 * A mesh where 1-3 has a favourite (fastest announced) that cannot be reached as `how` says, and a
 * spare; 0-1 and 3-4 are served by live peers.
 * @param {'refused' | 'dead' | 'silent_open'} how
 */
function meshWithDoomedFavourite(how) {
  const mesh = new FakeMesh();
  mesh.add(FIRST, 0, 1);
  const doomed = mesh.add(DOOMED, 1, 3);
  mesh.add(SPARE, 1, 3);
  mesh.add('f'.repeat(64), 3, 4);
  /** @type {string[]} */
  const offers = [];
  let opens = 0;
  if (how === 'silent_open') {
    const original = doomed.handle.bind(doomed);
    doomed.handle = async (peer, frame) => {
      if (frame.type === FrameType.OPEN) {
        opens++;
        return new Promise(() => {}); // its link answers pings, but OPEN never
      }
      return original(peer, frame);
    };
  }
  /** @type {ReturnType<FakeMesh['transport']> | null} */
  let fakes = null;
  // The real transport, its offers going through a signal client that acts as a node would.
  const real = new BrowserTransport({
    sendSignal: async (peerId) => {
      offers.push(peerId);
      if (how === 'refused') {
        throw new RemoteSignalingError(`ws://127.0.0.1:1: peer ${peerId.slice(0, 12)}… is not connected here nor known to a sibling`, { code: 'unknown_peer' });
      }
      // 'dead': the node relays the offer (the peer's node still has a route) and nothing answers
    },
    onFrame: () => {},
    config: { log: quiet, remoteAddresses: null, localAddress: null },
  });
  const transport = {
    /** @param {string} peerId @param {{timeoutMs?: number}} options */
    connect: (peerId, options) => (peerId === DOOMED && how !== 'silent_open' ? real.connect(peerId, options) : /** @type {NonNullable<typeof fakes>} */ (fakes).connect(peerId)),
  };
  const signal = mesh.signal();
  const lookup = signal.lookup;
  signal.lookup = async () =>
    (await lookup()).map((a) => (a.peer_id === DOOMED ? { ...a, throughput_milli: 50_000_000 } : a));
  const client = fakeClient(mesh, {
    config: CONFIG,
    signal,
    transport: (self) => {
      fakes = mesh.transport(self);
      return transport;
    },
  });
  return { client, offers, opens: () => opens, transport: real };
}

/**
 * Open a session, run two steps, check the logits against the reference through the spare's route.
 * @param {MeshClient} client
 */
async function chatThroughSpare(client) {
  const steps = [tokens([5, 6, 7]), tokens([8])];
  const expected = await referenceLogits(steps, [[0, 1], [1, 3], [3, 4]]);
  const started = performance.now();
  const session = await client.open(1, 16);
  const openedIn = performance.now() - started;
  assert.deepEqual(
    session.route.map(([peer]) => peer),
    [FIRST, SPARE, 'f'.repeat(64)],
  );
  for (const [i, ids] of steps.entries()) {
    const logits = await session.step(ids, ones(ids.length));
    logits.data.forEach((v, j) => assert.ok(Math.abs(v - expected[i][j]) < 1e-5, `step ${i} logit ${j}: ${v} != ${expected[i][j]}`));
  }
  assert.equal(session.failovers, 1);
  assert.ok(client.bans.banned(DOOMED));
  assert.equal(client.failures.length, 1);
  assert.equal(client.failures[0].peerId, DOOMED);
  await session.close();
  return { session, openedIn };
}

test('a refused signal (unknown_peer) is a hop failure: banned, routed around, the reference logits', async () => {
  const { client, offers, transport } = meshWithDoomedFavourite('refused');
  const { openedIn } = await chatThroughSpare(client);
  assert.deepEqual(offers, [DOOMED]);
  assert.match(client.failures[0].error, /TransportError: .*not delivered: .*not connected here nor known to a sibling/);
  assert.ok(openedIn < CONFIG.connectTimeoutMs, `a refusal costs no wait (${openedIn.toFixed(0)} ms)`);
  assert.equal(transport.links.length, 0, 'the half-open link is closed');
  await client.close();
});

test('a listed-but-dead peer (the offer goes out, no answer comes) costs one connect timeout', async () => {
  const { client, offers, transport } = meshWithDoomedFavourite('dead');
  const { openedIn } = await chatThroughSpare(client);
  assert.deepEqual(offers, [DOOMED]);
  assert.match(client.failures[0].error, /LinkTimeoutError: .*no answer came within 400 ms/);
  assert.ok(openedIn >= CONFIG.connectTimeoutMs - 50 && openedIn < CONFIG.connectTimeoutMs + 1_500, `opened in ${openedIn.toFixed(0)} ms`);
  assert.equal(transport.links.length, 0, 'the half-open link is closed');
  await client.close();
});

test('a peer that never answers OPEN is routed around after openTimeoutMs, not the request timeout', async () => {
  const { client, opens } = meshWithDoomedFavourite('silent_open');
  const { openedIn } = await chatThroughSpare(client);
  assert.equal(opens(), 1);
  assert.match(client.failures[0].error, /did not answer OPEN within 0\.4 s/);
  assert.ok(openedIn < CONFIG.requestTimeoutMs / 4, `opened in ${openedIn.toFixed(0)} ms`);
  await client.close();
});

test('a transport that never settles is cut off by the client itself', async () => {
  const { client } = meshWithDoomedFavourite('refused');
  const inner = client.transport.connect;
  client.transport = {
    connect: (peerId, options) => (peerId === DOOMED ? new Promise(() => {}) : inner(peerId, options)),
  };
  await chatThroughSpare(client);
  assert.match(client.failures[0].error, /LinkTimeoutError: .*no link within 400 ms/);
  await client.close();
});

test('the default OPEN timeout is the native one (OPEN_TIMEOUT_MS)', async () => {
  const { DEFAULT_CLIENT_CONFIG } = await import('../src/client/mesh_client.js');
  const { OPEN_TIMEOUT_MS } = await import('../src/protocol/constants.js');
  assert.equal(DEFAULT_CLIENT_CONFIG.openTimeoutMs, OPEN_TIMEOUT_MS);
  assert.equal(OPEN_TIMEOUT_MS, 10_000);
});

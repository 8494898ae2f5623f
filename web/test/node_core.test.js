// @ts-check
/**
 * The browser node assembly (web/src/node/core.js) with a fake signal client, ledger and transport:
 * ledger gossip through signaling answered once, here; WebRTC signals to the transport (offers only
 * when a serving role is plugged); frames to the role that claims the link; gossip rounds.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BrowserNodeCore, LEDGER_SIGNAL, WEBRTC_SIGNAL } from '../src/node/core.js';

const ME = 'a'.repeat(64);
const PEER = 'b'.repeat(64);
const OTHER = 'c'.repeat(64);
const quiet = { info: () => {}, warn: () => {} };

/** A signal client whose incoming signals the test pushes; what the node sends is recorded. */
function fakeSignal() {
  /** @type {{sender: string, payload: any, tsMs: number}[]} */
  const queue = [];
  /** @type {((s: any) => void) | null} */
  let waiting = null;
  let closed = false;
  const signal = {
    url: 'ws://fake',
    /** @type {[string, any][]} */
    sent: [],
    /** @param {string} sender @param {any} payload */
    push(sender, payload) {
      const s = { sender, payload, tsMs: Date.now() };
      if (waiting) {
        const w = waiting;
        waiting = null;
        w(s);
      } else queue.push(s);
    },
    /** @param {string} peer @param {any} payload */
    async sendSignal(peer, payload) {
      signal.sent.push([peer, payload]);
    },
    async *signals() {
      for (;;) {
        if (closed) return;
        const next = queue.shift() ?? (await new Promise((resolve) => (waiting = resolve)));
        if (next === null) return;
        yield next;
      }
    },
    lookup: async () => [{ peer_id: ME }, { peer_id: PEER }, { peer_id: OTHER }, { peer_id: PEER }],
    update: async () => {},
    async close() {
      closed = true;
      waiting?.(null);
    },
  };
  return signal;
}

/** @param {() => boolean} condition */
async function until(condition) {
  for (let i = 0; i < 200 && !condition(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  assert.ok(condition(), 'the condition never held');
}

function makeCore() {
  const signal = fakeSignal();
  /** @type {any[]} */
  const handled = [];
  const ledger = {
    /** @param {string} peer @param {any} msg */
    gossipReceive: async (peer, msg) => [{ kind: 'reply', to: msg.n }],
    /** @param {string} peer */
    gossipStart: async (peer) => ({ kind: 'summary', for: peer }),
  };
  const core = new BrowserNodeCore({
    identity: /** @type {any} */ ({ peerId: ME }),
    ledger,
    createSignal: async () => /** @type {any} */ (signal),
    createTransport: () => ({
      links: [],
      close: () => {},
      handleSignal: async (/** @type {any} */ incoming) => handled.push(incoming.payload.type),
    }),
    log: quiet,
  });
  return { core, signal, handled };
}

test('ledger gossip through signaling is answered by the core', async () => {
  const { core, signal } = makeCore();
  await core.connect(['ws://fake']);
  signal.push(PEER, { kind: LEDGER_SIGNAL, msg: { n: 1 } });
  signal.push(PEER, { kind: LEDGER_SIGNAL, msg: { n: 2 } });
  await until(() => signal.sent.length === 2);
  assert.deepEqual(signal.sent, [
    [PEER, { kind: LEDGER_SIGNAL, msg: { kind: 'reply', to: 1 } }],
    [PEER, { kind: LEDGER_SIGNAL, msg: { kind: 'reply', to: 2 } }],
  ]);
  await core.release();
});

test('a ledger still opening is waited for; without one, gossip is ignored', async () => {
  const { core, signal } = makeCore();
  /** @type {(l: any) => void} */
  let open = () => {};
  core.useLedger(new Promise((resolve) => (open = resolve)));
  await core.connect(['ws://fake']);
  signal.push(PEER, { kind: LEDGER_SIGNAL, msg: { n: 3 } });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(signal.sent.length, 0);
  open({ gossipReceive: async () => [{ kind: 'late' }], gossipStart: async () => null });
  await until(() => signal.sent.length === 1);
  core.useLedger(null);
  signal.push(PEER, { kind: LEDGER_SIGNAL, msg: { n: 4 } });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(signal.sent.length, 1);
  await core.release();
});

test('WebRTC signals: answers only for a client, offers too once a serving role is plugged', async () => {
  const { core, signal, handled } = makeCore();
  await core.connect(['ws://fake']);
  signal.push(PEER, { kind: WEBRTC_SIGNAL, type: 'offer' }); // no transport yet: ignored
  core.openTransport();
  signal.push(PEER, { kind: WEBRTC_SIGNAL, type: 'offer' }); // no serving role: ignored
  signal.push(PEER, { kind: WEBRTC_SIGNAL, type: 'answer' });
  await until(() => handled.length === 1);
  core.plug({ serves: true, claims: () => true, onFrame: () => {} });
  signal.push(PEER, { kind: WEBRTC_SIGNAL, type: 'offer' });
  await until(() => handled.length === 2);
  assert.deepEqual(handled, ['answer', 'offer']);
  await core.release();
});

test("frames go to the first role that claims the link; link events to every role", async () => {
  const { core } = makeCore();
  /** @type {any} */
  let hooks = null;
  core.createTransport = (h) => {
    hooks = h;
    return { links: [], close: () => {}, handleSignal: async () => {} };
  };
  core.openTransport();
  /** @type {string[]} */
  const got = [];
  const mine = { id: 'mine' };
  const client = { serves: false, claims: (/** @type {any} */ l) => l === mine, onFrame: () => got.push('client'), onLinkClosed: () => got.push('client closed') };
  const server = { serves: true, claims: () => true, onFrame: () => got.push('server'), onLinkClosed: () => got.push('server closed') };
  core.plug(client);
  core.plug(server);
  hooks.onFrame(mine, {});
  hooks.onFrame({ id: 'theirs' }, {});
  hooks.onLinkClosed(mine);
  core.unplug(client);
  hooks.onFrame(mine, {});
  assert.deepEqual(got, ['client', 'server', 'client closed', 'server closed', 'server']);
  await core.release();
});

test('a gossip round opens with up to fanout peers of the model, never itself', async () => {
  const { core, signal } = makeCore();
  await core.connect(['ws://fake']);
  assert.equal(await core.gossipNow('m', 4, 8), 2);
  const peers = signal.sent.map(([peer]) => peer).sort();
  assert.deepEqual(peers, [PEER, OTHER].sort());
  for (const [peer, payload] of signal.sent) assert.deepEqual(payload, { kind: LEDGER_SIGNAL, msg: { kind: 'summary', for: peer } });
  assert.equal(await core.gossipNow('m', 4, 1), 1);
  await core.release();
  assert.equal(await core.gossipNow('m', 4, 8), 0);
});

// @ts-check
/**
 * The embed relay (web/src/embed/relay.js) in Node: both halves over a `MessageChannel`, the page's real
 * `BrowserTransport` over in-memory RTCPeerConnections (./fake_rtc.js). Its bounds: pending requests,
 * sends per link, the queue of frames waiting for the worker (answered with ERROR `overloaded`), and a
 * silent worker declared dead, which closes the links.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RELAY_VERSION, RelayHost, RelayTransport } from '../src/embed/relay.js';
import { ErrorCode, FrameType, Reassembler, chunkMessage, decodeFrame, encodeFrame } from '../src/protocol/wire.js';
import { FAKE_SDP, FakePeerConnection, channelPair } from './fake_rtc.js';

/** @type {any} */ (globalThis).RTCPeerConnection = FakePeerConnection;

const PEER = 'a'.repeat(64);
const OFFER = { kind: 'webrtc', type: 'offer', sdp: FAKE_SDP, link: 'q1' };

const logger = () => {
  /** @type {string[]} */
  const warnings = [];
  return { warnings, info() {}, warn: (/** @type {unknown} */ m) => warnings.push(String(m)) };
};

/** @param {Promise<unknown>} promise */
const outcome = (promise) =>
  promise.then(
    () => ({ ok: true, name: '', message: '' }),
    (/** @type {Error} */ err) => ({ ok: false, name: err.name, message: err.message }),
  );

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolve once `check()` is true, or fail after `ms`. @param {() => boolean} check */
async function until(check, ms = 2_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < deadline, 'timed out waiting for a condition');
    await sleep(5);
  }
}

test('requests beyond maxPending fail at once; the rest time out when the page never answers', async () => {
  const { port1, port2 } = new MessageChannel();
  const proxy = new RelayTransport(port2, { sendSignal: async () => {}, onFrame() {} }, { log: logger(), maxPending: 2, requestTimeoutMs: 100 });
  const started = Date.now();
  const results = await Promise.all([0, 1, 2].map(() => outcome(proxy.handleSignal({ sender: PEER, payload: OFFER }))));
  assert.deepEqual(
    results.map((r) => r.name),
    ['TransportError', 'TransportError', 'TransportError'],
  );
  assert.match(results[2].message, /2 handle-signal requests already wait/);
  assert.match(results[0].message, /no answer across the relay within 100 ms/);
  assert.ok(Date.now() - started < 2_000);
  proxy.close();
  port1.close();
});

test('at most maxSendsPerLink frames of one link wait for the page', async () => {
  const { port1, port2 } = new MessageChannel();
  const proxy = new RelayTransport(port2, { sendSignal: async () => {}, onFrame() {} }, { log: logger(), maxSendsPerLink: 2, requestTimeoutMs: 100 });
  port1.postMessage({ t: 'link-open', link: 1, remoteId: PEER, linkId: 'L1' });
  await until(() => proxy.links.length === 1);
  const results = await Promise.all([0, 1, 2].map(() => outcome(proxy.links[0].send({ type: FrameType.PING }))));
  assert.equal(results[2].name, 'TransportError');
  assert.match(results[2].message, /2 frames already wait on the page/);
  proxy.close();
  port1.close();
});

/**
 * A RelayHost whose worker end is raw (it answers what a test tells it to, and never takes frames), with
 * one page link opened by an offer; the remote peer's end of that link's data channel is `remote`.
 * @param {{[key: string]: unknown}} options  RelayHost options
 */
async function hostWithOneLink(options) {
  const { port1, port2 } = new MessageChannel();
  /** @type {{[key: string]: any}[]} */
  const toWorker = [];
  port2.onmessage = (event) => {
    const m = event.data;
    toWorker.push(m);
    if (m.t === 'send-signal') port2.postMessage({ t: 'reply', id: m.id, ok: true, value: null }); // the answer "went out"
  };
  const log = logger();
  const host = new RelayHost(port1, { log, ...options });
  port2.postMessage({ t: 'hello', version: RELAY_VERSION, config: {} });
  port2.postMessage({ t: 'handle-signal', id: 1, sender: PEER, payload: OFFER });
  await until(() => toWorker.some((m) => m.t === 'reply' && m.id === 1));
  const reply = toWorker.find((m) => m.t === 'reply' && m.id === 1);
  assert.equal(reply?.ok, true, JSON.stringify(reply));
  const [local, remote] = channelPair();
  FakePeerConnection.made[FakePeerConnection.made.length - 1].deliverChannel(local);
  local.open();
  remote.open();
  await until(() => toWorker.some((m) => m.t === 'link-open'));
  /** @type {import('../src/protocol/wire.js').Frame[]} */
  const fromPage = [];
  const reassembler = new Reassembler();
  remote.addEventListener('message', (event) => {
    const message = reassembler.feed(/** @type {MessageEvent} */ (event).data, 0);
    if (message !== null) fromPage.push(decodeFrame(message));
  });
  let messageId = 0;
  /** @param {import('../src/protocol/wire.js').FrameInit} frame */
  const sendFromRemote = (frame) => {
    for (const chunk of chunkMessage(messageId++, encodeFrame(frame))) remote.send(chunk);
  };
  return { host, port2, toWorker, fromPage, sendFromRemote, remote, log };
}

test("frames past the page's queue bound are answered with ERROR overloaded, never queued", async () => {
  const { host, port2, toWorker, fromPage, sendFromRemote, log } = await hostWithOneLink({ maxQueuedFrames: 2 });
  const session = new Uint8Array(16).fill(3);
  for (let step = 0; step < 3; step++) sendFromRemote({ type: FrameType.OPEN, session, step, meta: { batch: 1 } });
  await until(() => fromPage.length === 1);
  assert.equal(toWorker.filter((m) => m.t === 'frame').length, 2);
  assert.deepEqual(host.queued.frames, 2);
  const [refused] = fromPage;
  assert.equal(refused.type, FrameType.ERROR);
  assert.equal(refused.meta.code, ErrorCode.OVERLOADED);
  assert.equal(refused.step, 2);
  assert.match(String(refused.meta.message), /2 frames .* already wait for the worker/);
  assert.equal(host.stats.overloaded, 1);
  assert.ok(log.warnings.some((w) => w.includes('overloaded')));
  // The worker takes one: there is room for one more.
  port2.postMessage({ t: 'ack', bytes: toWorker.find((m) => m.t === 'frame')?.bytes.byteLength });
  await until(() => host.queued.frames === 1);
  sendFromRemote({ type: FrameType.OPEN, session, step: 3, meta: { batch: 1 } });
  await until(() => toWorker.filter((m) => m.t === 'frame').length === 3);
  assert.equal(fromPage.length, 1);
  host.close();
  port2.close();
});

test('a silent worker is declared dead: every link closes, so clients fail over at once', async () => {
  /** @type {string[]} */
  const dead = [];
  const { host, port2, fromPage, sendFromRemote, remote } = await hostWithOneLink({
    heartbeatMs: 10,
    deadAfterMs: 60,
    onDead: (/** @type {string} */ reason) => dead.push(reason),
  });
  assert.equal(host.links.length, 1);
  await until(() => dead.length === 1);
  assert.match(dead[0], /has not answered for/);
  assert.equal(host.deadReason, dead[0]);
  assert.deepEqual(host.links, []);
  assert.equal(remote.readyState, 'closed');
  assert.equal(fromPage.length, 0);
  assert.throws(() => sendFromRemote({ type: FrameType.PING }), /closed/);
  port2.close();
});

test('hello with another relay version is refused', async () => {
  const { port1, port2 } = new MessageChannel();
  const log = logger();
  const host = new RelayHost(port1, { log });
  port2.postMessage({ t: 'hello', version: RELAY_VERSION + 1, config: {} });
  await until(() => log.warnings.length > 0);
  assert.match(log.warnings[0], /relay version/);
  assert.deepEqual(host.links, []);
  host.close();
  port2.close();
});

// @ts-check
/**
 * Opening a route's sessions (web/src/client/route_open.js, as python_peer/route_open.py): every hop's
 * OPEN in flight at once; a hop that fails to open gets its peer banned and a new route tried, which
 * reuses the sessions the other hops opened (a spare whose link closed is not taken, one the next route
 * lacks is closed); a payment refusal (a peer's, or our own ledger's before any peer is
 * asked) closes them and ends the generation; two routes opened at once write their holds one route
 * after the other. In-memory span servers over fake links (test/support/mesh_fakes.js).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MeshError } from '../src/client/mesh_client.js';
import { PaymentRequiredError } from '../src/ledger/errors.js';
import { ErrorCode, FrameType, errorFrame } from '../src/protocol/wire.js';
import { CLIENT_CONFIG, CLIENT_ID, FakeMesh, fakeClient, ones, pythonCodec, referenceLogits, tokens } from './support/mesh_fakes.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const B2 = 'd'.repeat(64);
const C = 'e'.repeat(64);
const CONFIG = { ...CLIENT_CONFIG, verifyAnswers: false }; // the fake peers hold no keys

/** @typedef {import('../src/protocol/wire.js').Frame} Frame */
/** @typedef {import('../src/node/span_server.js').SpanServer} SpanServer */

/**
 * Answer OPEN frames through `answer` instead of the server (other frames as before).
 * @param {SpanServer} server
 * @param {(frame: Frame, original: () => Promise<Frame>) => Promise<Frame>} answer
 */
function onOpen(server, answer) {
  const original = server.handle.bind(server);
  server.handle = (peer, frame) => (frame.type === FrameType.OPEN ? answer(frame, () => original(peer, frame)) : original(peer, frame));
}

/** @param {FakeMesh} mesh @param {string} peerId @param {number} type */
const seen = (mesh, peerId, type) => /** @type {any} */ (mesh.peers.get(peerId)).seen.filter((/** @type {Frame} */ f) => f.type === type);

/** @param {Uint8Array} bytes */
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * @param {{data: Float32Array}} logits
 * @param {number[]} expected
 */
function assertClose(logits, expected) {
  logits.data.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-5, `logit ${i}: ${v} != ${expected[i]}`));
}

test("a route's OPENs are all in flight at once, and the chain then gives the reference", async () => {
  const mesh = new FakeMesh();
  const servers = [mesh.add(A, 0, 1), mesh.add(B, 1, 3), mesh.add(C, 3, 4)];
  let inFlight = 0;
  let most = 0;
  /** @type {() => void} */
  let allArrived = () => {};
  const arrived = new Promise((resolve) => (allArrived = () => resolve(undefined)));
  for (const server of servers) {
    onOpen(server, async (frame, original) => {
      inFlight++;
      most = Math.max(most, inFlight);
      if (inFlight === servers.length) allArrived();
      // hop after hop, the first OPEN would wait here alone until the bound
      await Promise.race([arrived, new Promise((resolve) => setTimeout(resolve, 1_000))]);
      inFlight--;
      return original();
    });
  }
  const client = fakeClient(mesh, { config: CONFIG });
  const session = await client.open(1, 16);
  assert.equal(most, 3);
  assert.deepEqual(session.route, [[A, 0, 1], [B, 1, 3], [C, 3, 4]]);
  const [expected] = await referenceLogits([tokens([5, 6])], [[0, 1], [1, 3], [3, 4]]);
  assertClose(await session.step(tokens([5, 6]), ones(2)), expected);
  await session.close();
  await client.close();
});

test('a hop that fails to open: its peer banned, a new route tried, and the session the other hop opened reused with its hold', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  /** @type {string[]} */
  const refused = [];
  for (const peerId of [B, B2]) {
    onOpen(mesh.add(peerId, 2, 4), async (frame, original) => {
      if (refused.length) return original();
      refused.push(peerId); // the first peer asked for 2-4 is full
      return errorFrame(frame.session, frame.step, ErrorCode.SESSION_REFUSED, 'KV memory budget full');
    });
  }
  const ledger = slowLedger();
  const client = fakeClient(mesh, { config: CONFIG, ledger });
  const session = await client.open(1, 16);
  const [failed] = refused;
  const spare = failed === B ? B2 : B;
  assert.deepEqual(session.route, [[A, 0, 2], [spare, 2, 4]]);
  assert.equal(session.failovers, 1);
  assert.ok(client.bans.banned(failed));
  assert.equal(client.failures[0].peerId, failed);
  // A's session was opened once and kept: closing it unused would leave its hold binding our credit
  const opens = seen(mesh, A, FrameType.OPEN);
  assert.equal(opens.length, 1);
  assert.equal(seen(mesh, A, FrameType.CLOSE).length, 0);
  assert.equal(hex(session.hops[0].session), hex(opens[0].session));
  assert.deepEqual(
    ledger.holds.map((h) => h.server),
    [A, failed, spare],
    'one new hold on the retry',
  );
  const [expected] = await referenceLogits([tokens([7])], [[0, 2], [2, 4]]);
  assertClose(await session.step(tokens([7]), ones(1)), expected);
  await session.close();
  assert.equal(seen(mesh, A, FrameType.CLOSE).length, 1);
  await client.close();
});

test('a session of a failed route whose peer and span the next route lacks is closed, not kept', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  onOpen(mesh.add(B, 2, 4), async (frame) => {
    mesh.add(B2, 0, 4); // a peer for the whole model comes up: the next route is B2 alone
    return errorFrame(frame.session, frame.step, ErrorCode.SESSION_REFUSED, 'KV memory budget full');
  });
  const client = fakeClient(mesh, { config: CONFIG });
  const session = await client.open(1, 16);
  assert.deepEqual(session.route, [[B2, 0, 4]]);
  assert.ok(client.bans.banned(B));
  const [open] = seen(mesh, A, FrameType.OPEN);
  const closes = seen(mesh, A, FrameType.CLOSE);
  assert.equal(closes.length, 1);
  assert.equal(hex(closes[0].session), hex(open.session));
  await session.close();
  await client.close();
});

test('a spare whose link closed since is not taken: the next route opens a new session there', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  let refusals = 0;
  for (const peerId of [B, B2]) {
    onOpen(mesh.add(peerId, 2, 4), async (frame, original) => {
      if (refusals) return original();
      refusals++;
      // A's link drops while this OPEN is answered: A's session goes with it
      for (const link of /** @type {any} */ (mesh.peers.get(A)).links) link.close('link lost');
      return errorFrame(frame.session, frame.step, ErrorCode.SESSION_REFUSED, 'KV memory budget full');
    });
  }
  const client = fakeClient(mesh, { config: CONFIG });
  const session = await client.open(1, 16);
  const opens = seen(mesh, A, FrameType.OPEN);
  assert.equal(opens.length, 2);
  assert.equal(hex(session.hops[0].session), hex(opens[1].session));
  const [expected] = await referenceLogits([tokens([7])], [[0, 2], [2, 4]]);
  assertClose(await session.step(tokens([7]), ones(1)), expected);
  await session.close();
  await client.close();
});

test('a peer refusing payment (the attack: the cheapest price, then payment_required to all) is banned and routed around', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  /** @type {string[]} */
  const refusing = [];
  for (const peerId of [B, B2]) {
    onOpen(mesh.add(peerId, 2, 4), async (frame, original) => {
      if (refusing.length && refusing[0] !== peerId) return original();
      refusing.push(peerId); // the first peer asked for 2-4 refuses every payment
      return errorFrame(frame.session, frame.step, ErrorCode.PAYMENT_REQUIRED, 'balance 0 does not cover 12 units');
    });
  }
  const client = fakeClient(mesh, { config: CONFIG });
  const session = await client.open(1, 16);
  const [liar] = refusing;
  assert.equal(refusing.length, 1, 'asked once');
  assert.deepEqual(session.route, [[A, 0, 2], [liar === B ? B2 : B, 2, 4]]);
  assert.ok(client.bans.banned(liar));
  assert.equal(session.failovers, 1);
  const [expected] = await referenceLogits([tokens([7])], [[0, 2], [2, 4]]);
  assertClose(await session.step(tokens([7]), ones(1)), expected);
  await session.close();
  await client.close();
});

test("the only peer of a span refusing payment: the route's other sessions are closed and the generation ends (MeshError)", async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  onOpen(mesh.add(B, 2, 4), async (frame) => errorFrame(frame.session, frame.step, ErrorCode.PAYMENT_REQUIRED, 'balance 0 does not cover 12 units'));
  const client = fakeClient(mesh, { config: CONFIG });
  await assert.rejects(client.open(1, 16), (err) => err instanceof MeshError && /peer bbbbbbbb.* refused to serve: .*balance 0/.test(err.message));
  assert.equal(seen(mesh, B, FrameType.OPEN).length, 1, 'not asked again: each ask writes one more hold');
  assert.equal(seen(mesh, A, FrameType.CLOSE).length, seen(mesh, A, FrameType.OPEN).length);
  await client.close();
});

/**
 * A client ledger whose holds take a while to write (as signing does) and are recorded in order;
 * `refuse` makes it refuse every hold as beyond the balance.
 * @param {{refuse?: boolean}} [options]
 */
function slowLedger({ refuse = false } = {}) {
  /** @type {{server: string, session: string}[]} */
  const holds = [];
  return {
    holds,
    peerId: CLIENT_ID,
    codec: pythonCodec(),
    ownEntries: async () => [{ seq: 1 }],
    /** @param {{server: string, session: Uint8Array}} terms */
    async hold(terms) {
      await new Promise((resolve) => setTimeout(resolve, 5));
      if (refuse) throw new PaymentRequiredError('balance 0 credits does not cover the price of 1.2 credits');
      holds.push({ server: terms.server, session: hex(terms.session) });
      return `${holds.length}`.padStart(64, '0');
    },
    countersign: async () => Promise.reject(new Error('no receipt is proposed by these peers')),
  };
}

test('our own ledger refusing a hold ends the generation before any peer is asked', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  const client = fakeClient(mesh, { config: CONFIG, ledger: slowLedger({ refuse: true }) });
  await assert.rejects(client.open(1, 16), (err) => err instanceof MeshError && /our ledger refused to hold its price: balance 0/.test(err.message));
  assert.equal(mesh.peers.get(A)?.seen.length, 0);
  assert.equal(mesh.peers.get(B)?.seen.length, 0);
  await client.close();
});

test("two routes opened at once write their holds one route after the other, each named in its hop's OPEN", async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  const ledger = slowLedger();
  const client = fakeClient(mesh, { config: CONFIG, ledger });
  const sessions = await Promise.all([client.open(1, 16), client.open(1, 16)]);
  assert.equal(ledger.holds.length, 4);
  for (const at of [0, 2]) {
    const pair = ledger.holds.slice(at, at + 2);
    const owner = sessions.find((s) => hex(s.hops[0].session) === pair[0].session);
    assert.ok(owner, 'a route starts its holds');
    assert.deepEqual(
      pair,
      owner.hops.map((h) => ({ server: h.peerId, session: hex(h.session) })),
    );
  }
  // each OPEN names the hold written for its session
  for (const peerId of [A, B]) {
    for (const open of seen(mesh, peerId, FrameType.OPEN)) {
      const index = ledger.holds.findIndex((h) => h.session === hex(open.session));
      assert.equal(open.meta.hold, `${index + 1}`.padStart(64, '0'));
    }
  }
  await Promise.all(sessions.map((s) => s.close()));
  await client.close();
});

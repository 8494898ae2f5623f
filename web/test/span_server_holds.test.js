// @ts-check
/**
 * The browser span server's side of holds (web/src/node/span_server.js, as python_peer/server.py and
 * span_gate.py): OPEN hands the hold it names to the ledger's `requireHold` (the core's
 * `holds.admit_hold` under Pyodide, faked here), a hold opens one session only, a refusal is a
 * `payment_required` ERROR frame, and a FORWARD after the hold expired is refused the same way.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { SpanServer } from '../src/node/span_server.js';
import { ErrorCode, FrameType, decodeFrame, encodeFrame, makeFrame } from '../src/protocol/wire.js';
import { FakeBlocks, HIDDEN, MODEL, fakeManifest, pythonCodec } from './support/mesh_fakes.js';

const CLIENT = 'c'.repeat(64);
const GOOD = 'a1'.repeat(32);

/**
 * A ledger whose `requireHold` admits GOOD until `expires`, and refuses any other hold as the core does.
 * @param {{expires: number}} state
 */
function holdingLedger(state) {
  /** @type {any[]} */
  const calls = [];
  return {
    calls,
    codec: {},
    /** @param {string} client @param {unknown} hold @param {any} terms */
    async requireHold(client, hold, terms) {
      calls.push({ client, hold, terms });
      if (hold !== GOOD) {
        throw Object.assign(new Error(`client ${client.slice(0, 12)}…: this peer does not hold the hold`), { code: 'payment_required' });
      }
      return { client, price: 1640, hold_expires: state.expires };
    },
    /** @param {unknown[]} entries */
    async acceptEntries(entries) {
      calls.push({ accepted: entries });
      return entries.length;
    },
    serverReceipt: async () => ({ receipt: {}, serverSig: '' }),
    recordReceipt: async () => null,
  };
}

/** @param {import('../src/protocol/wire.js').FrameInit} init */
const wire = (init) => decodeFrame(encodeFrame(makeFrame(init)));

/**
 * @param {Uint8Array} session
 * @param {string | undefined} hold
 * @param {{[key: string]: unknown}} [extra]  more metadata (`log`: the entries OPEN carries)
 */
function open(session, hold, extra = {}) {
  /** @type {{[key: string]: unknown}} */
  const meta = { model: MODEL, start: 0, end: 2, batch: 1, max_length: 8, ...extra };
  if (hold !== undefined) meta.hold = hold;
  return wire({ type: FrameType.OPEN, session, step: 0, meta: /** @type {any} */ (meta) });
}

/** @param {Uint8Array} session */
function forward(session) {
  return wire({
    type: FrameType.FORWARD,
    session,
    step: 0,
    tensors: [
      { name: 'hidden_states', dtype: 'float32', shape: [1, 1, HIDDEN], data: new Float32Array(HIDDEN).fill(0.5) },
      { name: 'attention_mask', dtype: 'int64', shape: [1, 1], data: BigInt64Array.from([1n]) },
      { name: 'position_ids', dtype: 'int64', shape: [1, 1], data: BigInt64Array.from([0n]) },
    ],
  });
}

test('OPEN is admitted on the hold it names, once; another hold or none is refused payment_required', async () => {
  const state = { expires: Date.now() + 600_000 };
  const ledger = holdingLedger(state);
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), {
    ledger: /** @type {any} */ (ledger),
  });
  const first = new Uint8Array(16).fill(1);
  const opened = await server.handle(CLIENT, open(first, GOOD));
  assert.equal(opened.type, FrameType.RESULT, JSON.stringify(opened.meta));
  assert.equal(ledger.calls.length, 1);
  assert.equal(ledger.calls[0].hold, GOOD);
  assert.deepEqual({ ...ledger.calls[0].terms, session: undefined }, { session: undefined, model: MODEL, start: 0, end: 2, tokens: 8 });
  assert.deepEqual(Array.from(ledger.calls[0].terms.session), Array.from(first));

  // the same hold for another session: it has opened one already (the ledger is not even asked)
  const replayed = await server.handle(CLIENT, open(new Uint8Array(16).fill(2), GOOD));
  assert.equal(replayed.type, FrameType.ERROR);
  assert.equal(replayed.meta.code, ErrorCode.PAYMENT_REQUIRED);
  assert.match(String(replayed.meta.message), /already opened a session here/);
  assert.equal(ledger.calls.length, 1);

  for (const hold of ['b2'.repeat(32), undefined]) {
    const refused = await server.handle(CLIENT, open(new Uint8Array(16).fill(3), hold));
    assert.equal(refused.meta.code, ErrorCode.PAYMENT_REQUIRED);
    assert.match(String(refused.meta.message), /does not hold the hold/);
  }
  assert.equal(server.sessions.size, 1);
});

test('a FORWARD after the hold expired is refused payment_required; before, it runs', async () => {
  const state = { expires: Date.now() + 600_000 };
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), {
    ledger: /** @type {any} */ (holdingLedger(state)),
  });
  const session = new Uint8Array(16).fill(4);
  assert.equal((await server.handle(CLIENT, open(session, GOOD))).type, FrameType.RESULT);
  // the session's hold expires (the client may promise its credits elsewhere now)
  const key = `${CLIENT}:${'04'.repeat(16)}`;
  const held = /** @type {NonNullable<ReturnType<typeof server.sessions.get>>} */ (server.sessions.get(key));
  held.holdExpires = Date.now() - 1;
  const late = await server.handle(CLIENT, forward(session));
  assert.equal(late.type, FrameType.ERROR);
  assert.equal(late.meta.code, ErrorCode.PAYMENT_REQUIRED);
  assert.match(String(late.meta.message), /hold that pays for this session has expired/);
  held.holdExpires = Date.now() + 60_000;
  assert.equal((await server.handle(CLIENT, forward(session))).type, FrameType.RESULT);
});

test('OPEN carrying the log stores it as a push before the hold is checked, and says log: true; a malformed log is bad_frame, nothing stored', async () => {
  const state = { expires: Date.now() + 600_000 };
  const ledger = { ...holdingLedger(state), codec: pythonCodec() };
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), {
    ledger: /** @type {any} */ (ledger),
  });
  const entries = [{ seq: 1 }, { seq: 2 }]; // stored by the ledger's acceptEntries, which checks them (faked here)
  for (const log of ['not a list', Array(65).fill({ seq: 1 })]) {
    const refused = await server.handle(CLIENT, open(new Uint8Array(16).fill(5), GOOD, { log }));
    assert.equal(refused.type, FrameType.ERROR);
    assert.equal(refused.meta.code, ErrorCode.BAD_FRAME);
    assert.match(String(refused.meta.message), /log.*at most 64 entries/);
  }
  assert.deepEqual(ledger.calls, []);
  assert.equal(server.sessions.size, 0);

  const opened = await server.handle(CLIENT, open(new Uint8Array(16).fill(5), GOOD, { log: entries }));
  assert.equal(opened.type, FrameType.RESULT, JSON.stringify(opened.meta));
  assert.equal(opened.meta.log, true);
  assert.deepEqual(ledger.calls.map((c) => ('accepted' in c ? 'stored' : 'hold')), ['stored', 'hold']);
  assert.deepEqual(ledger.calls[0].accepted, entries);

  // replayed on another session: the log is stored again (a push is idempotent), the hold refused
  const replayed = await server.handle(CLIENT, open(new Uint8Array(16).fill(6), GOOD, { log: entries }));
  assert.equal(replayed.meta.code, ErrorCode.PAYMENT_REQUIRED);
  assert.equal(server.sessions.size, 1);
});

test('a peer without a ledger does not say log: true, and ignores a log', async () => {
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]));
  const opened = await server.handle(CLIENT, open(new Uint8Array(16).fill(7), undefined, { log: 'not a list' }));
  assert.equal(opened.type, FrameType.RESULT, JSON.stringify(opened.meta));
  assert.equal(opened.meta.log, undefined);
});

test('a client excluded by the evidence this node holds is refused session_refused before its log or hold is looked at; a suspect one is served', async () => {
  const state = { expires: Date.now() + 600_000 };
  // The refusal's message is the core's (`Reputation.refusal`, through `BrowserLedger.reputation`).
  const refusal = `peer ${CLIENT.slice(0, 12)}… is excluded: this node holds evidence against it from 3 clients`;
  /** @type {{[peer: string]: {level: string, refusal: string | null}}} */
  const standings = { [CLIENT]: { level: 'excluded', refusal } };
  const ledger = {
    ...holdingLedger(state),
    codec: pythonCodec(),
    /** @param {string} peerId */
    reputation: async (peerId) => standings[peerId] ?? { level: 'good', refusal: null },
  };
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), {
    ledger: /** @type {any} */ (ledger),
  });
  const refused = await server.handle(CLIENT, open(new Uint8Array(16).fill(8), GOOD, { log: [{ seq: 1 }] }));
  assert.equal(refused.type, FrameType.ERROR);
  assert.equal(refused.meta.code, ErrorCode.SESSION_REFUSED);
  assert.equal(refused.meta.message, refusal);
  assert.deepEqual(ledger.calls, []); // neither its log stored nor its hold asked
  assert.equal(server.sessions.size, 0);

  standings[CLIENT] = { level: 'suspect', refusal: null };
  const opened = await server.handle(CLIENT, open(new Uint8Array(16).fill(8), GOOD));
  assert.equal(opened.type, FrameType.RESULT, JSON.stringify(opened.meta));
});

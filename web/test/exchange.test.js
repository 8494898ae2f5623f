// @ts-check
/**
 * The ledger exchange on a session link (web/src/ledger/exchange.js): `ClientExchange` against
 * `ServerExchange` with fake ledgers, every message built and parsed by the real
 * `python_peer/core/ledger_exchange.py` (a Python subprocess standing in for Pyodide). Checks the
 * metadata is byte for byte what was hand-built before, receipts (a forged frame does not discard the
 * waiting one), the gossip cadence and budget, and the refusals a server sends.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ClientExchange, ExchangeRefusal, ServerExchange, receiptId } from '../src/ledger/exchange.js';
import { FrameType, canonicalJson } from '../src/protocol/wire.js';
import { CHANNEL_GOSSIP_BYTES } from '../src/protocol/constants.js';
import { pythonCodec } from './support/mesh_fakes.js';

const CLIENT = 'c'.repeat(64);
const SERVER = 'e'.repeat(64);
const quiet = { info: () => {}, warn: () => {} };
const codec = pythonCodec();
const SESSION = new Uint8Array(16).fill(7);
const KEY = `${CLIENT}:${'07'.repeat(16)}`;
const TERMS = { model: 'm', start: 1, end: 3, tokens: 12 };
const RECEIPT = { client: CLIENT, server: SERVER, session: '07'.repeat(16), ...TERMS, time_ms: 1 };

/** A server ledger that records what it is asked. */
function serverLedger() {
  return {
    codec,
    /** @type {unknown[]} */ accepted: [],
    /** @type {unknown[][]} */ recorded: [],
    /** @param {unknown[]} entries */
    acceptEntries(entries) {
      this.accepted.push(...entries);
      return entries.length;
    },
    async serverReceipt() {
      return { receipt: { ...RECEIPT }, serverSig: 'ab'.repeat(64) };
    },
    /** @param {any} receipt @param {string} clientSig @param {string} serverSig */
    recordReceipt(receipt, clientSig, serverSig) {
      if (clientSig !== 'cd'.repeat(64)) throw Object.assign(new Error('bad client signature'), { name: 'LedgerError' });
      this.recorded.push([receipt, clientSig, serverSig]);
    },
    /** @param {string} peer @param {any} msg */
    async gossipReceive(peer, msg) {
      return [{ kind: 'ack', n: msg.n }];
    },
  };
}

/**
 * A client ledger: its gossip session always wants one more round (to test the request budget).
 * @param {{onCountersign?: (terms: any) => void}} [hooks]
 */
function clientLedger(hooks = {}) {
  return {
    peerId: CLIENT,
    codec,
    ownEntries: async () => [{ seq: 1 }, { seq: 2 }],
    /** @param {any} receipt @param {string} serverSig @param {any} terms */
    async countersign(receipt, serverSig, terms) {
      hooks.onCountersign?.(terms);
      return { receipt, clientSig: 'cd'.repeat(64) };
    },
    gossipStart: async () => ({ kind: 'summary', n: 0 }),
    /** @param {string} peer @param {any} reply */
    gossipReceive: async (peer, reply) => [{ kind: 'more', n: reply.n + 1 }],
  };
}

/**
 * A `send` that hands each request to `server` as a span server would (the frame's session key),
 * recording the frames.
 * @param {ServerExchange} server
 * @param {any[]} sent
 */
function sendTo(server, sent) {
  return async (/** @type {any} */ link, /** @type {any} */ frame) => {
    sent.push(frame);
    const hex = Array.from(frame.session, (/** @type {number} */ b) => b.toString(16).padStart(2, '0')).join('');
    const meta = await server.answer(CLIENT, `${CLIENT}:${hex}`, frame.meta);
    return { type: FrameType.RESULT, session: frame.session, step: frame.step, flags: 0, meta, tensors: [] };
  };
}

const CONFIG = { requestTimeoutMs: 1000, gossipEveryMs: 30_000, gossipMaxRequests: 16 };

test('push on connect: the metadata is what was hand-built, the answer is the count stored', async () => {
  const ledger = serverLedger();
  const server = new ServerExchange({ ledger });
  /** @type {any[]} */
  const sent = [];
  const client = new ClientExchange({ ledger: clientLedger(), send: sendTo(server, sent), config: CONFIG, log: quiet });
  assert.equal(await client.push({ remoteId: SERVER }), 2);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].type, FrameType.GOSSIP);
  assert.equal(canonicalJson(sent[0].meta), canonicalJson({ kind: 'push', entries: [{ seq: 1 }, { seq: 2 }] }));
  assert.deepEqual(ledger.accepted, [{ seq: 1 }, { seq: 2 }]);
});

test('a receipt proposed at CLOSE is countersigned, returned on its session and recorded once', async () => {
  const ledger = serverLedger();
  /** @type {string[]} */
  const receipts = [];
  const server = new ServerExchange({ ledger, onReceipt: (client) => receipts.push(client) });
  const closeMeta = await server.closeAnswer(KEY, { client: CLIENT, session: SESSION, ...TERMS });
  assert.equal(canonicalJson(closeMeta), canonicalJson({ closed: true, receipt: RECEIPT, server_sig: 'ab'.repeat(64) }));
  // A forged copy (another signature) is refused and the receipt waits on for the genuine one.
  const forged = { kind: 'receipt', receipt: RECEIPT, client_sig: 'ee'.repeat(64), server_sig: 'ab'.repeat(64) };
  await assert.rejects(server.answer(CLIENT, KEY, forged), /bad client signature/);
  await assert.rejects(server.answer(CLIENT, KEY, { ...forged, receipt: { ...RECEIPT, tokens: 99 } }), ExchangeRefusal);
  /** @type {any[]} */
  const sent = [];
  /** @type {any[]} */
  const countersigned = [];
  const client = new ClientExchange({
    ledger: clientLedger({ onCountersign: (terms) => countersigned.push(terms) }),
    send: sendTo(server, sent),
    config: CONFIG,
    log: quiet,
  });
  const recorded = await client.settle({ remoteId: SERVER }, closeMeta, { server: SERVER, session: SESSION, step: 4, ...TERMS }, 1000);
  assert.equal(recorded, await receiptId(RECEIPT));
  assert.deepEqual(countersigned, [{ server: SERVER, session: '07'.repeat(16), ...TERMS }]);
  assert.equal(sent[0].step, 4);
  assert.equal(
    canonicalJson(sent[0].meta),
    canonicalJson({ kind: 'receipt', receipt: RECEIPT, client_sig: 'cd'.repeat(64), server_sig: 'ab'.repeat(64) }),
  );
  assert.equal(ledger.recorded.length, 1);
  assert.deepEqual(receipts, [CLIENT]);
  // Once recorded, the same frame again finds nothing waiting.
  await assert.rejects(server.answer(CLIENT, KEY, sent[0].meta), /no receipt of this session is waiting/);
});

test('no work, or no ledger: CLOSE proposes nothing and the client settles nothing', async () => {
  const server = new ServerExchange({ ledger: serverLedger() });
  assert.deepEqual(await server.closeAnswer(KEY, { client: CLIENT, session: SESSION, ...TERMS, tokens: 0 }), { closed: true });
  const free = new ServerExchange({ ledger: null });
  assert.deepEqual(await free.closeAnswer(KEY, { client: CLIENT, session: SESSION, ...TERMS }), { closed: true });
  const client = new ClientExchange({ ledger: clientLedger(), send: sendTo(server, []), config: CONFIG, log: quiet });
  assert.equal(await client.settle({ remoteId: SERVER }, { closed: true }, { server: SERVER, session: SESSION, step: 1, ...TERMS }, 1000), null);
  const none = new ClientExchange({ ledger: null, send: sendTo(server, []), config: CONFIG, log: quiet });
  assert.equal(await none.push({ remoteId: SERVER }), 0);
  assert.equal(await none.settle({ remoteId: SERVER }, { closed: true, receipt: RECEIPT, server_sig: 'x' }, { server: SERVER, session: SESSION, step: 1, ...TERMS }, 1000), null);
});

test('gossip: at most gossipMaxRequests requests per exchange, at most one exchange per peer per gossipEveryMs', async () => {
  const server = new ServerExchange({ ledger: serverLedger() });
  /** @type {any[]} */
  const sent = [];
  const client = new ClientExchange({ ledger: clientLedger(), send: sendTo(server, sent), config: { ...CONFIG, gossipMaxRequests: 5 }, log: quiet });
  assert.ok(client.gossipSoon(SERVER, { remoteId: SERVER }));
  assert.equal(client.gossipSoon(SERVER, { remoteId: SERVER }), null);
  await client.gossipSettled();
  assert.equal(sent.length, 5);
  assert.equal(canonicalJson(sent[0].meta), canonicalJson({ kind: 'gossip', msg: { kind: 'summary', n: 0 } }));
  assert.equal(canonicalJson(sent[1].meta), canonicalJson({ kind: 'gossip', msg: { kind: 'more', n: 1 } }));
  const never = new ClientExchange({ ledger: clientLedger(), send: sendTo(server, []), config: { ...CONFIG, gossipEveryMs: null }, log: quiet });
  assert.equal(never.gossipSoon(SERVER, { remoteId: SERVER }), null);
  assert.ok(CHANNEL_GOSSIP_BYTES > 0);
});

test('a peer answering a gossip request without replies is a bad answer', async () => {
  /** @type {any[]} */
  const seen = [];
  const send = async (/** @type {any} */ link, /** @type {any} */ frame) => ({ ...frame, type: FrameType.RESULT, meta: { nothing: true } });
  const client = new ClientExchange({
    ledger: clientLedger(),
    send,
    config: CONFIG,
    log: quiet,
    badAnswer: (message) => {
      seen.push(message);
      return new Error(message);
    },
  });
  await assert.rejects(client.gossipExchange(SERVER, { remoteId: SERVER }), /without a list of replies/);
  assert.equal(seen.length, 1);
});

test("a server's refusals: Python's messages, answered bad_frame by the span server", async () => {
  const server = new ServerExchange({ ledger: serverLedger() });
  await assert.rejects(server.answer(CLIENT, KEY, { kind: 'push', entries: 'not a list' }), (err) => err instanceof Error && err.name === 'LedgerError' && /a push carries a list of at most/.test(err.message));
  await assert.rejects(server.answer(CLIENT, KEY, { kind: 'steal' }), /unknown ledger request 'steal'/);
  await assert.rejects(server.answer(CLIENT, KEY, { kind: 'gossip', msg: [1] }), /a gossip message must be a JSON object/);
  await assert.rejects(server.answer('not-a-peer', KEY, { kind: 'push', entries: [] }), /keeps no ledger for this client/);
  const free = new ServerExchange({ ledger: null });
  assert.deepEqual(await free.answer(CLIENT, KEY, { kind: 'push', entries: [{ seq: 1 }] }), { stored: 0 });
  await assert.rejects(free.answer(CLIENT, KEY, { kind: 'gossip', msg: {} }), (err) => err instanceof ExchangeRefusal && err.code === 'bad_frame');
  // The gossip answer keeps Python's replies: as many as fit one frame.
  assert.deepEqual(await server.answer(CLIENT, KEY, { kind: 'gossip', msg: { n: 3 } }), { replies: [{ kind: 'ack', n: 3 }] });
});

test('before OPEN: a hold for the peer and the session is written, then the log pushed; its hash returned', async () => {
  const server = new ServerExchange({ ledger: serverLedger() });
  /** @type {any[]} */
  const sent = [];
  /** @type {string[]} */
  const order = [];
  /** @type {any[]} */
  const holds = [];
  const ledger = {
    ...clientLedger(),
    ownEntries: async () => {
      order.push('push');
      return [{ seq: 1 }, { seq: 2 }];
    },
    /** @param {any} terms */
    hold: async (terms) => {
      order.push('hold');
      holds.push(terms);
      return 'ab'.repeat(32);
    },
  };
  const client = new ClientExchange({ ledger, send: sendTo(server, sent), config: CONFIG, log: quiet });
  const session = new Uint8Array(16).fill(7);
  const terms = { session, model: 'm', start: 0, end: 2, tokens: 64 };
  assert.equal(await client.hold({ remoteId: SERVER }, terms), 'ab'.repeat(32));
  assert.deepEqual(holds, [{ ...terms, server: SERVER }]);
  assert.deepEqual(order, ['hold', 'push']); // the peer gets the log with the hold in it
  assert.equal(sent.length, 1);
  assert.equal(sent[0].meta.kind, 'push');
  // a refusal of our own ledger (a hold beyond our balance) reaches the caller, and nothing is sent
  const poor = { ...ledger, hold: async () => Promise.reject(Object.assign(new Error('balance 0 does not cover'), { code: 'payment_required' })) };
  const refusing = new ClientExchange({ ledger: poor, send: sendTo(server, sent), config: CONFIG, log: quiet });
  await assert.rejects(refusing.hold({ remoteId: SERVER }, terms), (err) => /** @type {any} */ (err).code === 'payment_required');
  assert.equal(sent.length, 1);
  // without a ledger: no hold, nothing sent
  const none = new ClientExchange({ ledger: null, send: sendTo(server, sent), config: CONFIG, log: quiet });
  assert.equal(await none.hold({ remoteId: SERVER }, terms), null);
  assert.equal(sent.length, 1);
});

// @ts-check
/**
 * The ledger exchange on a session link (web/src/ledger/client_exchange.js, server_exchange.js): `ClientExchange` against
 * `ServerExchange` with fake ledgers, every message built and parsed by the real
 * `python_peer/core/ledger_exchange.py` (a Python subprocess standing in for Pyodide). Checks the
 * metadata is byte for byte what was hand-built before, receipts (a forged frame does not discard the
 * waiting one), the gossip cadence and budget, the refusals a server sends, `held` (a span server says
 * through which seq it holds the client's log; the client's next push carries only what follows, the
 * whole push again when the peer does not hold them all or does not say), and holds written together.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ClientExchange } from '../src/ledger/client_exchange.js';
import { ExchangeRefusal, receiptId } from '../src/ledger/exchange.js';
import { ServerExchange } from '../src/ledger/server_exchange.js';
import { SpanServer } from '../src/node/span_server.js';
import { FrameType, PaymentRequiredError, canonicalJson, decodeFrame, encodeFrame, makeFrame, raiseForError } from '../src/protocol/wire.js';
import { CHANNEL_GOSSIP_BYTES } from '../src/protocol/constants.js';
import { FakeBlocks, MODEL, fakeManifest, pythonCodec } from './support/mesh_fakes.js';

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

test('before OPEN: a hold for the peer and the session is written, then the log pushed (deliver); its hash returned', async () => {
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
  const terms = { server: SERVER, session, model: 'm', start: 0, end: 2, tokens: 64 };
  assert.deepEqual(await client.writeHolds([terms]), ['ab'.repeat(32)]);
  assert.equal(await client.deliver({ remoteId: SERVER }), null); // pushed: the peer is not known to take logs
  assert.deepEqual(holds, [terms]);
  assert.deepEqual(order, ['hold', 'push']); // the peer gets the log with the hold in it
  assert.equal(sent.length, 1);
  assert.equal(sent[0].meta.kind, 'push');
  // a refusal of our own ledger (a hold beyond our balance) reaches the caller, and nothing is sent
  const poor = { ...ledger, hold: async () => Promise.reject(Object.assign(new Error('balance 0 does not cover'), { code: 'payment_required' })) };
  const refusing = new ClientExchange({ ledger: poor, send: sendTo(server, sent), config: CONFIG, log: quiet });
  await assert.rejects(refusing.writeHolds([terms]), (err) => /** @type {any} */ (err).code === 'payment_required');
  assert.equal(sent.length, 1);
  // without a ledger: no hold, nothing sent
  const none = new ClientExchange({ ledger: null, send: sendTo(server, sent), config: CONFIG, log: quiet });
  assert.deepEqual(await none.writeHolds([terms]), [null]);
  assert.equal(await none.deliver({ remoteId: SERVER }), null);
  assert.equal(sent.length, 1);
});

/**
 * A client's own log of `n` entries, as the exchange reads it (the grant first, then the latest; or the
 * latest, newest first).
 * @param {number} n
 */
function ownLog(n) {
  const entries = Array.from({ length: n }, (_, i) => ({ author: CLIENT, seq: i + 1 }));
  return {
    ...clientLedger(),
    entries,
    append: () => entries.push({ author: CLIENT, seq: entries.length + 1 }),
    ownEntries: async (limit = 64) => [entries[0], ...entries.slice(Math.max(1, entries.length - limit + 1))],
    /** @param {string} peer @param {number} limit */
    log: async (peer, limit) => entries.slice(-limit).reverse(),
  };
}

/**
 * A span server's ledger holding the entries pushed to it, each only after the one before (so a push
 * of what follows entries it lost is refused), and telling the latest one held of an author when asked.
 * @param {{tells?: boolean}} [options]  `tells: false`: a ledger that cannot list entries (no `held` said)
 */
function holdingLedger({ tells = true } = {}) {
  /** @type {Map<string, number>} author -> the latest seq held */
  const heads = new Map();
  const ledger = {
    heads,
    codec,
    /** @param {{author: string, seq: number}[]} entries */
    acceptEntries(entries) {
      let stored = 0;
      for (const { author, seq } of entries) {
        const head = heads.get(author) ?? 0;
        if (seq === head + 1) {
          heads.set(author, seq);
          stored++;
        }
      }
      return stored;
    },
    requireHold: async () => ({ price: 0, hold_expires: Date.now() + 60_000 }),
    serverReceipt: async () => ({ receipt: {}, serverSig: '' }),
    recordReceipt: async () => null,
  };
  if (!tells) return ledger;
  return {
    ...ledger,
    /** @param {string} author */
    log: async (author) => (heads.has(author) ? [{ author, seq: heads.get(author) }] : []),
  };
}

/**
 * A `send` that hands each request to a span server as its link would (encoded, decoded), recording
 * the seqs each push carried (the kind of any other request).
 * @param {SpanServer} server
 * @param {(number[] | string)[]} pushed
 */
function sendToSpanServer(server, pushed) {
  return async (/** @type {any} */ link, /** @type {any} */ init) => {
    const frame = decodeFrame(encodeFrame(makeFrame(init)));
    const meta = /** @type {any} */ (frame.meta);
    pushed.push(meta.kind === 'push' ? meta.entries.map((/** @type {any} */ e) => e.seq) : meta.kind);
    const answer = decodeFrame(encodeFrame(await server.handle(CLIENT, frame)));
    assert.equal(answer.type, FrameType.RESULT, JSON.stringify(answer.meta));
    return answer;
  };
}

/** @param {any} ledger */
const spanServer = (ledger) =>
  new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), { ledger: /** @type {any} */ (ledger) });

test("the span server answers a push with held; the client's next push carries only what follows, or nothing", async () => {
  const ledger = holdingLedger();
  const server = spanServer(ledger);
  const frame = makeFrame({ type: FrameType.GOSSIP, session: SESSION, step: 0, meta: { kind: 'push', entries: [{ author: CLIENT, seq: 1 }] } });
  assert.deepEqual((await server.handle(CLIENT, frame)).meta, { stored: 1, held: 1 });
  ledger.heads.clear();
  const own = { ...ownLog(3), gossipStart: undefined }; // no anti-entropy: what the pushes carry alone
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const client = new ClientExchange({ ledger: own, send: sendToSpanServer(server, pushed), config: CONFIG, log: quiet });
  const link = { remoteId: SERVER };
  assert.equal(await client.push(link), 3);
  own.append();
  own.append();
  assert.equal(await client.push(link), 2);
  assert.equal(await client.push(link), 0); // nothing new: nothing sent
  assert.deepEqual(pushed, [[1, 2, 3], [4, 5]]);
  // a log grown by more than one push since: the grant and the latest entries again
  for (let i = 0; i < 64; i++) own.append();
  await client.push(link); // 64 entries since: one push carries them
  assert.deepEqual(pushed[2], Array.from({ length: 64 }, (_, i) => 6 + i));
  for (let i = 0; i < 65; i++) own.append();
  await client.push(link);
  assert.deepEqual(pushed[3], [1, ...Array.from({ length: 63 }, (_, i) => 72 + i)]);
});

test('pushSoon: a peer known to hold our log gets what it lacks in the background; none is sent to a peer not known', async () => {
  const server = spanServer(holdingLedger());
  const own = { ...ownLog(3), gossipStart: undefined };
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const toServer = sendToSpanServer(server, pushed);
  let broken = false;
  const send = async (/** @type {any} */ link, /** @type {any} */ init) => {
    if (broken) throw new Error('link closed');
    return toServer(link, init);
  };
  /** @type {string[]} */
  const warned = [];
  const client = new ClientExchange({ ledger: own, send, config: CONFIG, log: { info() {}, warn: (m) => warned.push(m) } });
  const link = { remoteId: SERVER };
  assert.equal(client.pushSoon(link), null); // not known to hold our log: nothing sent
  assert.deepEqual(pushed, []);
  await client.push(link);
  own.append(); // a closed generation's receipts
  own.append();
  assert.notEqual(client.pushSoon(link), null);
  await client.gossipSettled();
  assert.deepEqual(pushed, [[1, 2, 3], [4, 5]]);
  own.append();
  broken = true; // a link that closed: the failure is logged, never thrown
  await client.pushSoon(link);
  await client.gossipSettled();
  assert.equal(warned.length, 1);
  assert.match(warned[0], /pushing our log to .* failed: Error: link closed/);
});

test('a log longer than one push reaches a new peer by anti-entropy first, so the push reaches the hold', async () => {
  const own = ownLog(100); // the grant and the latest 63 skip entries 2-37
  const ledger = holdingLedger();
  const server = spanServer({
    ...ledger,
    // what an anti-entropy round brings the peer: every entry of ours, in order
    /** @param {string} peer @param {any} msg */
    gossipReceive: async (peer, msg) => {
      assert.equal(msg.kind, 'summary');
      ledger.acceptEntries(own.entries.slice(ledger.heads.get(CLIENT) ?? 0));
      return [{ kind: 'entries', n: 0 }];
    },
  });
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const client = new ClientExchange({
    ledger: { ...own, gossipStart: async () => ({ kind: 'summary' }), gossipReceive: async () => [] },
    send: sendToSpanServer(server, pushed),
    config: CONFIG,
    log: quiet,
  });
  const link = { remoteId: SERVER };
  await client.push(link);
  assert.deepEqual(pushed, ['gossip', [1, ...Array.from({ length: 63 }, (_, i) => 38 + i)]]);
  assert.equal(ledger.heads.get(CLIENT), 100, 'the newest entry (a hold) extends our chain there');
  own.append();
  await client.push(link); // held through 100: only what follows, no gossip
  assert.deepEqual(pushed.slice(2), [[101]]);
  // the peer loses our log; 70 entries later, within gossipEveryMs of the last round: the long push
  // alone (at most one anti-entropy exchange per peer per gossipEveryMs, as periodic gossip)
  ledger.heads.clear();
  for (let i = 0; i < 70; i++) own.append();
  await client.push(link);
  const long = [1, ...Array.from({ length: 63 }, (_, i) => 109 + i)];
  assert.deepEqual(pushed.slice(3), [long]);
  // a client that has not gossiped with it yet: anti-entropy first again
  const other = new ClientExchange({
    ledger: { ...own, gossipStart: async () => ({ kind: 'summary' }), gossipReceive: async () => [] },
    send: sendToSpanServer(server, pushed),
    config: CONFIG,
    log: quiet,
  });
  ledger.heads.clear();
  await other.push(link);
  assert.deepEqual(pushed.slice(4), ['gossip', long]);
  assert.equal(ledger.heads.get(CLIENT), 171);
});

test('a short log (one push carries all of it) needs no anti-entropy', async () => {
  const own = ownLog(64);
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const client = new ClientExchange({ ledger: own, send: sendToSpanServer(spanServer(holdingLedger()), pushed), config: CONFIG, log: quiet });
  assert.equal(await client.push({ remoteId: SERVER }), 64);
  assert.deepEqual(pushed, [Array.from({ length: 64 }, (_, i) => i + 1)]);
});

test('a peer that lost our entries, or does not say held: the grant and the latest entries are pushed again', async () => {
  const ledger = holdingLedger();
  const own = ownLog(2);
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const client = new ClientExchange({ ledger: own, send: sendToSpanServer(spanServer(ledger), pushed), config: CONFIG, log: quiet });
  const link = { remoteId: SERVER };
  await client.push(link);
  ledger.heads.clear(); // the peer lost our log (a wiped store): what follows is refused there
  own.append();
  assert.equal(await client.push(link), 3);
  assert.deepEqual(pushed, [[1, 2], [3], [1, 2, 3]]);
  own.append();
  await client.push(link); // and it holds all of them again
  assert.deepEqual(pushed[3], [4]);

  /** @type {(number[] | string)[]} */
  const silent = [];
  const unsaid = new ClientExchange({ ledger: ownLog(2), send: sendToSpanServer(spanServer(holdingLedger({ tells: false })), silent), config: CONFIG, log: quiet });
  await unsaid.push(link);
  await unsaid.push(link);
  assert.deepEqual(silent, [[1, 2], [1, 2]]);
});

test('a peer claiming to hold more of our log than we wrote is not believed: the next push carries the log', async () => {
  const own = ownLog(2);
  /** @type {(number[] | string)[]} */
  const pushed = [];
  const honest = sendToSpanServer(spanServer(holdingLedger()), pushed);
  /** The attack: every push answered `held: 10**9`, so that the client would never push there again. */
  const lying = async (/** @type {any} */ link, /** @type {any} */ init) => {
    const answer = await honest(link, init);
    return { ...answer, meta: { ...answer.meta, held: 10 ** 9 } };
  };
  const client = new ClientExchange({ ledger: own, send: lying, config: CONFIG, log: quiet });
  const link = { remoteId: SERVER };
  await client.push(link);
  own.append();
  await client.push(link);
  assert.deepEqual(pushed, [[1, 2], [1, 2, 3]]);
});

test("held is said only as a non-negative integer (Python's parse_push_held); push_answer carries it", () => {
  assert.deepEqual(codec.pushAnswer(2, 7), { stored: 2, held: 7 });
  assert.deepEqual(codec.pushAnswer(2), { stored: 2 });
  assert.equal(codec.parsePushHeld({ stored: 0, held: 0 }), 0);
  for (const held of [-1, 2.5, '3', true, null, undefined]) assert.equal(codec.parsePushHeld({ stored: 1, held }), null);
  assert.throws(() => codec.parsePushHeld(null), (err) => err instanceof Error && err.name === 'LedgerError');
});

test('holds written together: a second call waits for the first, a refusal stops its own and not the next', async () => {
  /** @type {string[]} */
  const order = [];
  const ledger = {
    ...clientLedger(),
    /** @param {{server: string}} terms */
    hold: async (terms) => {
      await new Promise((resolve) => setTimeout(resolve, terms.server === 'x1' ? 10 : 1));
      if (terms.server === 'bad') throw Object.assign(new Error('balance 0 does not cover'), { code: 'payment_required' });
      order.push(terms.server);
      return terms.server;
    },
  };
  const client = new ClientExchange({ ledger, send: sendTo(new ServerExchange({ ledger: serverLedger() }), []), config: CONFIG, log: quiet });
  const terms = (/** @type {string} */ server) => ({ server, session: SESSION, ...TERMS });
  const [first, refused, third] = await Promise.allSettled([
    client.writeHolds([terms('x1'), terms('x2')]),
    client.writeHolds([terms('y1'), terms('bad'), terms('y3')]),
    client.writeHolds([terms('z1')]),
  ]);
  assert.deepEqual(first, { status: 'fulfilled', value: ['x1', 'x2'] });
  assert.equal(refused.status, 'rejected');
  assert.deepEqual(third, { status: 'fulfilled', value: ['z1'] });
  assert.deepEqual(order, ['x1', 'x2', 'y1', 'z1']);
  const none = new ClientExchange({ ledger: null, send: sendTo(new ServerExchange({ ledger: null }), []), config: CONFIG, log: quiet });
  assert.deepEqual(await none.writeHolds([terms('x1')]), [null]);
});

test("OPEN carries the log to a peer that takes it (log: true) and holds it up to a few entries; a peer that lost it gets the log pushed and OPEN again, once", async () => {
  let admitting = true;
  const base = holdingLedger();
  const ledger = {
    ...base,
    // the hold's hash names its seq here; the span server admits it only if it holds our log through it
    requireHold: async (/** @type {string} */ client, /** @type {unknown} */ hold) => {
      if (!admitting) throw Object.assign(new Error('balance 0 does not cover the price'), { code: 'payment_required' });
      if ((base.heads.get(client) ?? 0) < Number(hold)) {
        throw Object.assign(new Error(`this peer does not hold the hold ${hold}`), { code: 'payment_required' });
      }
      return { price: 0, hold_expires: Date.now() + 60_000 };
    },
  };
  const server = spanServer(ledger);
  const own = { ...ownLog(2), gossipStart: undefined };
  const withHolds = {
    ...own,
    hold: async () => {
      own.append();
      return String(own.entries.length).padStart(64, '0');
    },
  };
  /** @type {string[]} what each request was: a push with its seqs, an OPEN with the seqs it carried */
  const seen = [];
  let hideTakesLog = false; // the peer's answers to OPEN stop saying log: true
  const send = async (/** @type {any} */ link, /** @type {any} */ init) => {
    const frame = decodeFrame(encodeFrame(makeFrame(init)));
    const meta = /** @type {any} */ (frame.meta);
    const seqs = (/** @type {any[]} */ entries) => entries.map((e) => e.seq).join(',');
    if (frame.type === FrameType.OPEN) seen.push(`open ${meta.log === undefined ? '-' : seqs(meta.log)}`);
    else seen.push(`push ${seqs(meta.entries)}`);
    const answer = decodeFrame(encodeFrame(await server.handle(CLIENT, frame)));
    raiseForError(answer);
    if (hideTakesLog) delete (/** @type {any} */ (answer.meta)).log;
    return answer;
  };
  const client = new ClientExchange({ ledger: withHolds, send, config: CONFIG, log: quiet });
  const link = { remoteId: SERVER };
  let n = 0;
  const openOne = async () => {
    const [hold] = await client.writeHolds([{ server: SERVER, session: new Uint8Array(16).fill(++n), model: MODEL, start: 0, end: 2, tokens: 8 }]);
    const carried = await client.deliver(link);
    const meta = { model: MODEL, start: 0, end: 2, batch: 1, max_length: 8, hold };
    return client.open(link, { type: FrameType.OPEN, session: new Uint8Array(16).fill(n), step: 0, meta }, carried, 1000);
  };
  assert.equal((await openOne()).meta.log, true); // the first: pushed, then OPEN
  await openOne(); // the next: carried by OPEN, nothing pushed
  await openOne();
  assert.deepEqual(seen, ['push 1,2,3', 'open -', 'open 4', 'open 5']);
  assert.equal(ledger.heads.get(CLIENT), 5);

  ledger.heads.clear(); // the peer lost our log (a crash): the carried entries do not extend its chain
  seen.length = 0;
  await openOne();
  assert.deepEqual(seen, ['open 6', 'push 1,2,3,4,5,6', 'open -']);

  // a peer that does not say log: true (any more) gets our log pushed before each OPEN
  hideTakesLog = true;
  seen.length = 0;
  await openOne();
  await openOne();
  assert.deepEqual(seen, ['open 7', 'push 8', 'open -']);

  // a refusal with the log carried is retried once, after a push of the whole log; the second is the caller's
  hideTakesLog = false;
  await openOne(); // pushed (the peer is not known to take logs), then OPEN: it says log: true again
  admitting = false;
  seen.length = 0;
  await assert.rejects(openOne(), (err) => err instanceof PaymentRequiredError && /balance 0/.test(err.message));
  assert.deepEqual(seen, ['open 10', 'push 1,2,3,4,5,6,7,8,9,10', 'open -']);
});

// @ts-check
/**
 * The browser's side of the two push defects fixed natively in `python_peer/ledger_service.py` and
 * `link_ledger.py` (tests/fast/test_fork_flood.py, test_push_budget.py; the core's own side is
 * tests/fast/test_browser_fork_flood.py): the server exchange tells its ledger which client pushed (a
 * GOSSIP push, or the log an OPEN carries), so the push draws on that client's gossip entry budget and
 * one over it is refused (`bad_frame`, `rate_limited`) before the hold is looked at; and the client never
 * carries (in a push or in OPEN) entries that do not fit one frame, however few: a log with dozens of
 * fork proofs the peer lacks reaches it by anti-entropy first, then a push that fits.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ClientExchange } from '../src/ledger/client_exchange.js';
import { LedgerError } from '../src/ledger/errors.js';
import { ServerExchange } from '../src/ledger/server_exchange.js';
import { SpanServer } from '../src/node/span_server.js';
import { ErrorCode, FrameType, canonicalJson, decodeFrame, encodeFrame, makeFrame } from '../src/protocol/wire.js';
import { MAX_METADATA_BYTES, PUSH_BYTES, PUSH_ENTRIES } from '../src/protocol/constants.js';
import { FakeBlocks, MODEL, fakeManifest, pythonCodec } from './support/mesh_fakes.js';

const CLIENT = 'c'.repeat(64);
const SERVER = 'e'.repeat(64);
const quiet = { info: () => {}, warn: () => {} };
const codec = pythonCodec();
const KEY = `${CLIENT}:${'07'.repeat(16)}`;
const UTF8 = new TextEncoder();

/**
 * A span server's ledger whose `acceptEntries` charges the sender's budget as the core's `admit_push`
 * does (`rate_limited` over it), recording who pushed how many.
 * @param {number} budget
 */
function budgetLedger(budget) {
  /** @type {[string | undefined, number][]} */
  const pushes = [];
  /** @type {unknown[]} */
  const holds = [];
  return {
    pushes,
    holds,
    codec,
    /** @param {unknown[]} entries @param {string} [sender] */
    async acceptEntries(entries, sender) {
      pushes.push([sender, entries.length]);
      if (sender !== undefined && entries.length > budget) {
        throw new LedgerError(`rate_limited: ${sender.slice(0, 12)}… pushed more entries than its budget; try again later`, { code: 'rate_limited' });
      }
      if (sender !== undefined) budget -= entries.length;
      return entries.length;
    },
    /** @param {string} client @param {unknown} hold */
    async requireHold(client, hold) {
      holds.push(hold);
      return { client, price: 0, hold_expires: Date.now() + 60_000 };
    },
    serverReceipt: async () => ({ receipt: {}, serverSig: '' }),
    recordReceipt: async () => null,
  };
}

test('the server exchange names the client that pushed, for a push and for the log an OPEN carries; over its budget, OPEN is bad_frame before the hold', async () => {
  const ledger = budgetLedger(3);
  const exchange = new ServerExchange({ ledger });
  assert.deepEqual(await exchange.answer(CLIENT, KEY, codec.pushRequest([{ seq: 1 }, { seq: 2 }])), { stored: 2 });
  assert.equal(await exchange.takeLog(CLIENT, { log: [{ seq: 3 }] }), 1);
  assert.deepEqual(ledger.pushes, [[CLIENT, 2], [CLIENT, 1]]);
  await assert.rejects(exchange.answer(CLIENT, KEY, codec.pushRequest([{ seq: 4 }])), (err) => err instanceof LedgerError && err.code === 'rate_limited');

  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]), { ledger: /** @type {any} */ (ledger) });
  const meta = { model: MODEL, start: 0, end: 2, batch: 1, max_length: 8, hold: 'a1'.repeat(32), log: [{ seq: 4 }] };
  const open = decodeFrame(encodeFrame(makeFrame({ type: FrameType.OPEN, session: new Uint8Array(16).fill(3), step: 0, meta })));
  const refused = await server.handle(CLIENT, open);
  assert.equal(refused.type, FrameType.ERROR);
  assert.equal(refused.meta.code, ErrorCode.BAD_FRAME);
  assert.match(String(refused.meta.message), /rate_limited/);
  assert.deepEqual(ledger.holds, []); // refused before the hold was looked at
  assert.deepEqual(ledger.pushes.at(-1), [CLIENT, 1]);
});

/** @param {unknown} entry  its bytes in a push, as the core counts them (`PUSH_BYTES`) */
const weight = (entry) => UTF8.encode(canonicalJson(entry)).length + 1;

/**
 * A client's own log whose entries can be heavy (fork proofs are ~1.3 KB), read as the core does:
 * `ownEntries` the grant and the latest that fit PUSH_BYTES (`BrowserLedgerCore.own_entries`), `log`
 * the latest, newest first. Its gossip session sends one summary and learns nothing.
 */
function heavyLog() {
  /** @type {{author: string, seq: number, pad: string}[]} */
  const entries = [];
  /** @param {number} size */
  const append = (size) => entries.push({ author: CLIENT, seq: entries.length + 1, pad: 'x'.repeat(size) });
  append(100);
  return {
    peerId: CLIENT,
    codec,
    entries,
    append,
    async ownEntries(limit = PUSH_ENTRIES) {
      let room = PUSH_BYTES - weight(entries[0]);
      const kept = [];
      for (const entry of entries.slice(Math.max(1, entries.length - limit + 1)).reverse()) {
        room -= weight(entry);
        if (room < 0) break;
        kept.push(entry);
      }
      return [entries[0], ...kept.reverse()];
    },
    /** @param {string} peer @param {number} limit */
    log: async (peer, limit) => entries.slice(-limit).reverse(),
    countersign: async () => Promise.reject(new Error('not used')),
    gossipStart: async () => ({ kind: 'summary' }),
    gossipReceive: async () => [],
  };
}

/**
 * A `send` standing in for a peer that holds what it was pushed and takes logs in OPEN: every frame
 * goes through the wire's encoding (one over a frame's limits throws), and each request is noted.
 * @param {string[]} seen
 */
function peer(seen) {
  let held = 0;
  let synced = false; // an anti-entropy exchange brought it the whole log
  /** @param {any[]} entries */
  const span = (entries) => {
    const seqs = entries.map((e) => e.seq);
    return seqs.length > 2 ? `${seqs[0]},${seqs[1]}..${seqs.at(-1)}` : seqs.join(',');
  };
  return async (/** @type {any} */ link, /** @type {any} */ init) => {
    const frame = decodeFrame(encodeFrame(makeFrame(init)));
    const meta = /** @type {any} */ (frame.meta);
    let answer;
    if (frame.type === FrameType.OPEN) {
      seen.push(`open ${meta.log === undefined ? '-' : span(meta.log)}`);
      if (meta.log !== undefined) held = Math.max(held, ...meta.log.map((/** @type {any} */ e) => e.seq));
      answer = { log: true };
    } else if (meta.kind === 'push') {
      seen.push(`push ${span(meta.entries)}`);
      const seqs = meta.entries.map((/** @type {any} */ e) => e.seq);
      for (const seq of seqs) if (seq === held + 1 || synced) held = Math.max(held, seq);
      answer = codec.pushAnswer(seqs.length, held);
    } else {
      seen.push(meta.kind);
      synced = true;
      answer = codec.gossipAnswer([]);
    }
    return { type: FrameType.RESULT, session: frame.session, step: frame.step, flags: 0, meta: answer, tensors: [] };
  };
}

test('entries a peer lacks that are few but do not fit a frame are neither carried in OPEN nor pushed: anti-entropy first, then a push that fits', async () => {
  const own = heavyLog();
  /** @type {string[]} */
  const seen = [];
  const config = { requestTimeoutMs: 1000, gossipEveryMs: 30_000, gossipMaxRequests: 1 };
  const client = new ClientExchange({ ledger: own, send: peer(seen), config, log: quiet });
  const link = { remoteId: SERVER };
  const open = async () => {
    const carried = await client.deliver(link);
    const meta = { model: MODEL, start: 0, end: 2, batch: 1, max_length: 8, hold: '0'.repeat(64) };
    await client.open(link, { type: FrameType.OPEN, session: new Uint8Array(16), step: 0, meta }, carried, 1000);
  };
  own.append(100);
  await open(); // pushed, then OPEN: the peer says it takes logs
  own.append(100);
  await open(); // the entry it lacks rides in OPEN
  assert.deepEqual(seen, ['push 1,2', 'open -', 'open 3']);

  // A neighbour's gossip made us write 60 fork proofs: fewer than PUSH_ENTRIES, far more than a frame.
  for (let i = 0; i < 60; i++) own.append(1_300);
  own.append(100); // the hold
  const lacking = own.entries.slice(3);
  assert.ok(lacking.length <= PUSH_ENTRIES && lacking.reduce((sum, e) => sum + weight(e), 0) > MAX_METADATA_BYTES);
  seen.length = 0;
  await open();
  const pushed = await own.ownEntries();
  assert.ok(pushed.at(-1)?.seq === 64 && pushed.length < 64); // one push skips some of our entries
  assert.deepEqual(seen, ['gossip', `push 1,${pushed[1].seq}..64`, 'open -']);

  // A peer that does not take logs in OPEN is pushed what it lacks, the same way.
  const other = { remoteId: 'f'.repeat(64) };
  const pushes = /** @type {string[]} */ ([]);
  const second = new ClientExchange({ ledger: own, send: peer(pushes), config, log: quiet });
  own.entries.splice(4);
  await second.push(other); // it holds 1..4 now
  for (let i = 0; i < 60; i++) own.append(1_300);
  const latest = await own.ownEntries();
  await second.push(other);
  assert.deepEqual(pushes, ['push 1,2..4', 'gossip', `push 1,${latest[1].seq}..64`]);
});

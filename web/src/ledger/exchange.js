// @ts-check
/**
 * The ledger exchange on a session link, one object per side (the mirror of Python's link ledger):
 *
 * - `ClientExchange` (used by `MeshClient`): before each session, appends a hold paying the peer for it
 *   to the client's own log (a route's holds together: `writeHolds`) and pushes the log there (GOSSIP
 *   `{kind: 'push', entries}` -> `{stored, held}`; OPEN names the hold: `python_peer/core/holds.py`);
 *   once a peer said it holds the log through some seq (`held`), the next push there carries only the
 *   entries written since, and the whole push again if the answer does not say `held` through the last
 *   of them (Python's `ClientExchange.push`); a log longer than one push (the grant and the latest
 *   entries skip some) reaches a peer by an anti-entropy exchange first, unless one ran with it less
 *   than `gossipEveryMs` (30 s when periodic gossip is off) ago (Python's `ClientExchange.deliver`). To a
 *   peer that takes our log in OPEN (its last answer to OPEN said `log: true`) and holds it up to a few
 *   entries ago, those entries ride in OPEN itself instead (`deliver`, then `open`: one round trip
 *   instead of two; refused for payment, the whole log is pushed and OPEN sent again, once). It
 *   countersigns the receipt a peer proposes at CLOSE and returns it (`{kind: 'receipt', ...}` ->
 *   `{recorded}`), runs anti-entropy with the peer after a recorded receipt (`{kind: 'gossip', msg}` ->
 *   `{replies}`; at most once per peer per `gossipEveryMs`, `gossipMaxRequests` requests each), and once
 *   a generation closed pushes its peers what they lack (`pushSoon`), so the next OPEN carries only holds.
 * - `ServerExchange` (used by `SpanServer`): proposes the receipt at CLOSE, keeps it waiting (at most
 *   MAX_PENDING_RECEIPTS) until the client returns it countersigned, and answers the three requests (a
 *   push with `held`, the seq through which the node now holds the client's log, when the ledger can tell).
 *   It also stores the log an OPEN carries (`OPEN_LOG`, as Python's `ServerExchange.admit`), as a push.
 *
 * Every message is built and parsed by `python_peer/core/ledger_exchange.py` through an
 * `ExchangeCodec` (the ledger's, under Pyodide, unless one is given). Without a ledger nothing goes
 * through Python: a client pushes and countersigns nothing; a server answers a push `{stored: 0}` (so
 * clients need not special-case it), refuses other requests, and proposes no receipt.
 */

import { FrameType, canonicalJson } from '../protocol/wire.js';
import { PaymentRequiredError } from '../protocol/errors.js';
import { signingBytes } from '../identity/identity.js';
import { CHANNEL_GOSSIP_BYTES, MAX_PENDING_RECEIPTS, OPEN_LOG, PUSH_ENTRIES, RECEIPT_CONTEXT } from '../protocol/constants.js';

const PEER_ID_RE = /^[0-9a-f]{64}$/;
const BAD_FRAME = 'bad_frame';
/** Peers whose `held` a client remembers, the least recently learnt forgotten first (`MAX_GOSSIPED` in Python). */
const MAX_HELD = 1024;

/** The `seq` of a ledger entry (a JSON object as `Entry.to_dict()`). @param {unknown} entry */
const seqOf = (entry) => Number(/** @type {{seq?: unknown}} */ (entry).seq);

/** @typedef {import('./exchange_codec.js').ExchangeCodec} ExchangeCodec */
/** @typedef {{info(msg: string): void, warn(msg: string): void}} Logger */
/** @typedef {{[key: string]: unknown}} Json */

/** A ledger request refused with an error code (`bad_frame`): the span server answers an ERROR frame. */
export class ExchangeRefusal extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(code, message, options) {
    super(message, options);
    this.name = 'ExchangeRefusal';
    this.code = code;
  }
}

/**
 * Set `key` (to `value`, in a map) as the newest item of `table`, forgetting the oldest beyond `limit`:
 * what a client remembers per peer, and a server per hold, stays bounded however many it meets
 * (Python's `link_ledger._remember`).
 * @template V
 * @param {Map<string, V> | Set<string>} table
 * @param {string} key
 * @param {V} [value]
 * @param {number} [limit]
 */
export function remember(table, key, value, limit = MAX_HELD) {
  table.delete(key);
  if (table instanceof Map) table.set(key, /** @type {V} */ (value));
  else table.add(key);
  while (table.size > limit) table.delete(/** @type {string} */ (table.keys().next().value));
}

/** @param {Uint8Array} bytes */
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * The receipt id of `docs/ledger.md`: the sha256 of the bytes both parties sign.
 * @param {Json} receipt
 */
export async function receiptId(receipt) {
  const bytes = /** @type {Uint8Array<ArrayBuffer>} */ (signingBytes(RECEIPT_CONTEXT, receipt));
  return hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

/**
 * @param {{codec?: ExchangeCodec} | null} ledger
 * @param {ExchangeCodec | null | undefined} codec
 */
function codecOf(ledger, codec) {
  if (ledger === null) return null;
  const found = codec ?? ledger.codec ?? null;
  if (found === null) throw new TypeError('a ledger exchange needs an ExchangeCodec (the ledger has none)');
  return found;
}

// --- the client's side --------------------------------------------------------------------------------

/**
 * What the client side needs of a ledger: `BrowserLedger`.
 * @typedef {object} ClientLedger
 * @property {string} peerId
 * @property {ExchangeCodec} [codec]
 * @property {(limit?: number) => Promise<unknown[]> | unknown[]} ownEntries
 * @property {(peerId: string, limit?: number) => Promise<unknown[]>} [log]  an author's latest entries,
 *   newest first (without it every push carries the grant and the latest entries)
 * @property {(terms: HoldTerms) => Promise<string>} [hold]  appends a hold for one session; resolves to its entry hash
 * @property {(receipt: unknown, serverSig: string, terms: {server: string, session: string, model: string,
 *   start: number, end: number, tokens: number}) => Promise<{receipt: unknown, clientSig: string}>} countersign
 * @property {(peer: string, options: {maxMessageBytes: number}) => Promise<unknown>} [gossipStart]
 * @property {(peer: string, message: unknown, options: {maxMessageBytes: number}) => Promise<unknown[]>} [gossipReceive]
 */

/**
 * What a hold pays for: `server`'s session `session` over blocks `[start, end)` of `model`, at most
 * `tokens` token positions.
 * @typedef {{server: string, session: string | Uint8Array, model: string, start: number, end: number, tokens: number}} HoldTerms
 */

/**
 * A link to one peer, as the exchange sees it: `RpcClient`.
 * @typedef {{remoteId: string}} ExchangeLink
 */

/**
 * Send one GOSSIP request on a link and get its RESULT (remote errors thrown): `MeshClient.call`.
 * @typedef {(link: any, frame: import('../protocol/wire.js').FrameInit, timeoutMs: number) =>
 *   Promise<import('../protocol/wire.js').Frame>} SendRequest
 */

/** The client's side of the ledger exchange on its session links. */
export class ClientExchange {
  /** @type {Map<string, number>} peer id -> when the last gossip exchange with it started */
  #gossiped = new Map();
  /** @type {Set<Promise<void>>} */
  #runs = new Set();
  /** @type {Map<string, number>} peer id -> the seq through which it said it holds our log */
  #held = new Map();
  /** @type {Promise<unknown>} the holds being written: another route's wait for them (`writeHolds`) */
  #writing = Promise.resolve();
  /** @type {Set<string>} peer ids whose last answer to OPEN said they take our log in OPEN (`OPEN_LOG`) */
  #takesLog = new Set();

  /**
   * @param {object} options
   * @param {ClientLedger | null} options.ledger  null: push nothing, countersign nothing, never gossip
   * @param {ExchangeCodec | null} [options.codec]  default: the ledger's
   * @param {SendRequest} options.send
   * @param {{requestTimeoutMs: number, gossipEveryMs: number | null, gossipMaxRequests: number}} options.config
   * @param {Logger} [options.log]
   * @param {() => boolean} [options.closed]  whether the client is closed (stops a gossip exchange)
   * @param {(message: string, cause: unknown) => Error} [options.badAnswer]  the error for a peer's
   *   malformed answer (the mesh client's BadAnswerError: the peer is routed around)
   */
  constructor({ ledger, codec, send, config, log = console, closed = () => false, badAnswer }) {
    this.ledger = ledger;
    this.badAnswer = badAnswer ?? ((message, cause) => new ExchangeRefusal(BAD_FRAME, message, { cause }));
    this.codec = codecOf(ledger, codec);
    this.send = send;
    this.config = config;
    this.log = log;
    this.closed = closed;
  }

  /**
   * Push our own log to a peer: it judges our balance from the entries it holds. Once it said through
   * which seq it holds them (`held`), only the entries after that (nothing at all when there are none);
   * else, or if its answer then does not say `held` through the last of them (it lost or refused some,
   * or does not say), the grant and the latest entries; when those skip some of our entries (a log
   * longer than one push), an anti-entropy exchange with the peer first brings it what it lacks, unless
   * one ran recently (`#antiEntropyDue`): without them the hold would not extend our chain there, and
   * OPEN would be refused. Resolves to how many it stored (0 without a ledger, nothing sent).
   * @param {ExchangeLink} link
   */
  async push(link) {
    if (this.ledger === null || this.codec === null) return 0;
    const peerId = link.remoteId;
    const known = this.#held.get(peerId);
    if (known !== undefined) {
      const entries = await this.#entriesAfter(known);
      if (entries !== null && entries.length === 0) return 0;
      if (entries !== null) {
        const { stored, held } = await this.#push(link, entries);
        const last = seqOf(entries[entries.length - 1]);
        if (held !== null && held >= last) return stored;
        this.log.info(`peer ${peerId.slice(0, 8)} holds our log through ${held}, not ${last}: pushing the log`);
      }
      this.#held.delete(peerId);
    }
    let entries = await this.ledger.ownEntries();
    if (Math.max(0, ...entries.map(seqOf)) > entries.length && this.#antiEntropyDue(peerId)) {
      this.log.info(`our log is longer than one push: ledger gossip with ${peerId.slice(0, 8)} first`);
      await this.gossipExchange(peerId, link);
      entries = await this.ledger.ownEntries();
    }
    return (await this.#push(link, entries)).stored;
  }

  /**
   * Whether to run anti-entropy with `peerId` before a push that skips entries: none ran (or started in
   * the background) less than `gossipEveryMs` ago, 30 s when periodic gossip is off; noted as started.
   * @param {string} peerId
   */
  #antiEntropyDue(peerId) {
    const ledger = this.ledger;
    if (ledger === null || !ledger.gossipStart || !ledger.gossipReceive) return false;
    const now = performance.now();
    const last = this.#gossiped.get(peerId);
    if (last !== undefined && now - last < (this.config.gossipEveryMs ?? 30_000)) return false;
    this.#gossiped.set(peerId, now);
    return true;
  }

  /**
   * Our own entries after `seq`, oldest first; null when more than one push carries (or the ledger
   * cannot list its latest entries).
   * @param {number} seq
   * @returns {Promise<unknown[] | null>}
   */
  async #entriesAfter(seq) {
    const ledger = /** @type {ClientLedger} */ (this.ledger);
    if (ledger.log === undefined) return null;
    const latest = await ledger.log(ledger.peerId, PUSH_ENTRIES);
    const head = latest.length ? seqOf(latest[0]) : 0;
    if (head - seq > PUSH_ENTRIES) return null;
    return latest.filter((entry) => seqOf(entry) > seq).reverse();
  }

  /**
   * Push `entries`: how many the peer stored, and through which seq it says it holds our log (null: unsaid).
   * @param {ExchangeLink} link
   * @param {unknown[]} entries
   */
  async #push(link, entries) {
    const codec = /** @type {ExchangeCodec} */ (this.codec);
    const answer = await this.#request(link, codec.pushRequest(entries), this.config.requestTimeoutMs);
    const stored = this.#parse(link, 'push', () => codec.parsePushAnswer(answer.meta));
    let held = this.#parse(link, 'push', () => codec.parsePushHeld(answer.meta));
    const last = Math.max(0, ...entries.map(seqOf));
    if (held !== null && held > last) {
      // beyond the newest entry of ours it was sent (our head when we read it): a lie, which would stop
      // our pushes there for good; taken as unsaid
      this.log.info(`peer ${link.remoteId.slice(0, 8)} says it holds our log through ${held}, past our ${last}: ignored`);
      held = null;
    }
    if (held !== null) this.#noteHeld(link.remoteId, held);
    return { stored, held };
  }

  /**
   * `peerId` holds our log through `seq` (or further, if we knew that already).
   * @param {string} peerId
   * @param {number} seq
   */
  #noteHeld(peerId, seq) {
    const before = this.#held.get(peerId) ?? 0;
    remember(this.#held, peerId, Math.max(seq, before));
  }

  /**
   * Before OPEN naming a hold just written: to a peer that takes our log in OPEN (`log: true` in its
   * last answer to OPEN) and is known to hold it up to a few entries ago, the entries it lacks, for OPEN
   * to carry (`OPEN_LOG`: one round trip instead of two); else our log is pushed (`push`) and the
   * result is null. Python's `ClientExchange.deliver`.
   * @param {ExchangeLink} link
   * @returns {Promise<unknown[] | null>}
   */
  async deliver(link) {
    if (this.ledger === null) return null;
    const known = this.#held.get(link.remoteId);
    if (known !== undefined && this.#takesLog.has(link.remoteId)) {
      const entries = await this.#entriesAfter(known);
      if (entries !== null) return entries;
    }
    await this.push(link);
    return null;
  }

  /**
   * Send OPEN (`frame`, naming our hold) carrying `carried` (from `deliver`) as its log, and return the
   * answer, noting whether the peer takes our log in OPEN. Refused `payment_required` with our log
   * carried, the peer may not hold what we thought (it lost it, or says `log: true` falsely): our whole
   * log is pushed and OPEN sent again without it, once; a second refusal is the caller's to count.
   * @param {ExchangeLink} link
   * @param {import('../protocol/wire.js').FrameInit} frame
   * @param {unknown[] | null} carried
   * @param {number} timeoutMs
   */
  async open(link, frame, carried, timeoutMs) {
    const peerId = link.remoteId;
    const carrying = carried !== null && carried.length > 0;
    let answer;
    try {
      answer = await this.send(link, carrying ? { ...frame, meta: { ...frame.meta, [OPEN_LOG]: /** @type {any} */ (carried) } } : frame, timeoutMs);
    } catch (err) {
      if (!carrying || !(err instanceof PaymentRequiredError)) throw err;
      this.log.info(`peer ${peerId.slice(0, 8)} refused our hold with our log carried: pushing the log`);
      this.#held.delete(peerId);
      await this.push(link);
      answer = await this.send(link, frame, timeoutMs);
    }
    if (carrying) this.#noteHeld(peerId, Math.max(...carried.map(seqOf))); // stored: the hold was admitted
    this.#takesLog.delete(peerId);
    if (/** @type {{[key: string]: unknown}} */ (answer.meta)[OPEN_LOG] === true) remember(this.#takesLog, peerId);
    return answer;
  }

  /**
   * Append the holds of `terms` to our own log, in order and together: the holds of another route
   * opened at the same time are written before or after them, never between (so two chats that do not
   * both fit our balance do not each get part of their holds). A hold refused (PaymentRequiredError)
   * stops there; the ones before it stay written. Resolves to the holds' hashes, for OPEN's `hold`
   * once each peer was given our log (`deliver`); nulls without a ledger.
   * @param {HoldTerms[]} terms
   * @returns {Promise<(string | null)[]>}
   */
  writeHolds(terms) {
    const ledger = this.ledger;
    if (ledger === null || ledger.hold === undefined) return Promise.resolve(terms.map(() => null));
    const hold = ledger.hold.bind(ledger);
    const run = this.#writing.then(async () => {
      /** @type {string[]} */
      const hashes = [];
      for (const term of terms) hashes.push(await hold(term));
      return hashes;
    });
    this.#writing = run.catch(() => {});
    return run;
  }

  /**
   * After CLOSE: countersign the receipt the peer proposed in its answer (checked against what this
   * client sent) and return it on the session's link; resolves to the id the peer recorded, or null
   * when no receipt was proposed or this client keeps no ledger.
   * @param {ExchangeLink} link
   * @param {unknown} closeMeta  the metadata of the answer to CLOSE
   * @param {{server: string, session: Uint8Array, step: number, model: string, start: number, end: number, tokens: number}} terms
   * @param {number} timeoutMs
   * @returns {Promise<string | null>}
   */
  async settle(link, closeMeta, { server, session, step, model, start, end, tokens }, timeoutMs) {
    if (this.ledger === null || this.codec === null) return null;
    const codec = this.codec;
    const proposed = this.#parse({ remoteId: server }, 'CLOSE', () => codec.parseCloseAnswer(closeMeta));
    if (proposed === null) return null;
    const { receipt, clientSig } = await this.ledger.countersign(proposed.receipt, proposed.serverSig, {
      server,
      session: hex(session),
      model,
      start,
      end,
      tokens,
    });
    const meta = codec.receiptRequest(receipt, clientSig, proposed.serverSig);
    const answer = await this.send(link, { type: FrameType.GOSSIP, session, step, meta: /** @type {any} */ (meta) }, timeoutMs);
    return this.#parse(link, 'receipt', () => codec.parseReceiptAnswer(answer.meta));
  }

  /**
   * Start a gossip exchange with `peerId` in the background, unless one started less than
   * `gossipEveryMs` ago (or the ledger cannot gossip); its promise, or null. Failures are logged, never thrown.
   * @param {string} peerId @param {ExchangeLink} link
   * @returns {Promise<void> | null}
   */
  gossipSoon(peerId, link) {
    const every = this.config.gossipEveryMs;
    const ledger = this.ledger;
    if (ledger === null || every === null || !ledger.gossipStart || !ledger.gossipReceive || this.closed()) return null;
    const now = performance.now();
    const last = this.#gossiped.get(peerId);
    if (last !== undefined && now - last < every) return null;
    this.#gossiped.set(peerId, now);
    const run = this.gossipExchange(peerId, link).then((sent) => this.log.info(`ledger gossip with ${peerId.slice(0, 8)}: ${sent} requests`));
    return this.#background(run, `ledger gossip with ${peerId.slice(0, 8)}`);
  }

  /**
   * Push what `link`'s peer lacks of our log in the background, if it is known to hold it (else null).
   * Python's `ClientExchange.push_soon`. @param {ExchangeLink} link @returns {Promise<void> | null}
   */
  pushSoon(link) {
    if (this.ledger === null || !this.#held.has(link.remoteId) || this.closed()) return null;
    return this.#background(this.push(link), `pushing our log to ${link.remoteId.slice(0, 8)}`);
  }

  /** Track `run` until it settles (`gossipSettled`); a failure is logged, never thrown. @param {Promise<unknown>} run @param {string} what */
  #background(run, what) {
    const warn = (/** @type {unknown} */ err) => this.log.warn(`${what} failed: ${err instanceof Error ? `${err.name}: ${err.message}` : err}`);
    const logged = run.then(() => undefined, warn);
    const tracked = logged.finally(() => this.#runs.delete(tracked));
    this.#runs.add(tracked);
    return tracked;
  }

  /** Wait for the gossip exchanges and pushes under way. */
  async gossipSettled() {
    while (this.#runs.size) await Promise.all([...this.#runs]);
  }

  /**
   * Anti-entropy with a serving peer over its link (Python's `gossip_exchange`): send our `summary` as a
   * gossip request, feed each reply of the answer to our gossip session with the peer, send what that
   * answers as new requests, and stop when nothing is left or after `gossipMaxRequests`. Resolves to
   * the number of requests sent.
   * @param {string} peerId
   * @param {ExchangeLink} link
   * @returns {Promise<number>}
   */
  async gossipExchange(peerId, link) {
    const ledger = this.ledger;
    const codec = this.codec;
    if (ledger === null || codec === null || !ledger.gossipStart || !ledger.gossipReceive) return 0;
    const options = { maxMessageBytes: CHANNEL_GOSSIP_BYTES };
    const first = await ledger.gossipStart(peerId, options);
    const queue = first === null || first === undefined ? [] : [first];
    let sent = 0;
    while (queue.length && sent < this.config.gossipMaxRequests) {
      if (this.closed()) throw new ExchangeRefusal(BAD_FRAME, 'the mesh client is closed');
      const answer = await this.#request(link, codec.gossipRequest(queue.shift()), this.config.requestTimeoutMs);
      sent++;
      const replies = this.#parse(link, 'gossip request', () => codec.parseGossipAnswer(answer.meta));
      for (const reply of replies) queue.push(...(await ledger.gossipReceive(peerId, reply, options)));
    }
    if (queue.length) this.log.info(`ledger gossip with ${peerId.slice(0, 8)} stopped after ${sent} requests`);
    return sent;
  }

  /**
   * Parse a peer's answer; a malformed one is the peer's failure (`badAnswer`).
   * @template T
   * @param {ExchangeLink} link
   * @param {string} what
   * @param {() => T} parse
   * @returns {T}
   */
  #parse(link, what, parse) {
    try {
      return parse();
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      throw this.badAnswer(`peer ${link.remoteId.slice(0, 16)} answered a ${what}: ${why}`, err);
    }
  }

  /**
   * A request outside any session: a fresh random session id, step 0.
   * @param {ExchangeLink} link
   * @param {Json} meta
   * @param {number} timeoutMs
   */
  #request(link, meta, timeoutMs) {
    const session = crypto.getRandomValues(new Uint8Array(16));
    return this.send(link, { type: FrameType.GOSSIP, session, step: 0, meta: /** @type {any} */ (meta) }, timeoutMs);
  }
}

// --- the server's side --------------------------------------------------------------------------------

/**
 * What the server side needs of the node's ledger: `BrowserLedger`. An error named `LedgerError` is
 * the client's bad input (the span server answers `bad_frame` with `ledger: ...`).
 * @typedef {object} ServerLedger
 * @property {ExchangeCodec} [codec]
 * @property {(entries: unknown) => Promise<number> | number} acceptEntries
 * @property {(peerId: string, limit?: number) => Promise<unknown[]> | unknown[]} [log]  an author's latest
 *   entries, newest first: a push is answered `held` (the seq of the client's latest entry held) when given
 * @property {(terms: {session: string, model: string, start: number, end: number, tokens: number, client: string}) =>
 *   Promise<{receipt: Json, serverSig: string}>} serverReceipt
 * @property {(receipt: Json, clientSig: string, serverSig: string) => unknown} recordReceipt
 * @property {(peer: string, message: unknown, options: {maxMessageBytes: number}) => Promise<unknown[]>} [gossipReceive]
 */

/** The server's side of the ledger exchange: receipts proposed at CLOSE and the GOSSIP requests. */
export class ServerExchange {
  /**
   * @param {object} options
   * @param {ServerLedger | null} options.ledger  null: sessions are free
   * @param {ExchangeCodec | null} [options.codec]  default: the ledger's
   * @param {(client: string) => void} [options.onReceipt]  a countersigned receipt was recorded
   */
  constructor({ ledger, codec, onReceipt = () => {} }) {
    this.ledger = ledger;
    this.codec = codecOf(ledger, codec);
    this.onReceipt = onReceipt;
    /** @type {Map<string, {receipt: Json, canonical: string, recording: boolean}>} proposed at CLOSE, by session key */
    this.receipts = new Map();
  }

  /**
   * The answer to CLOSE of session `key`: with a ledger and work done by a client with a peer id, the
   * receipt proposed (signed by this node), kept waiting for the client's signature.
   * @param {string} key  the session's key (client and session id)
   * @param {{client: string, session: Uint8Array, model: string, start: number, end: number, tokens: number}} terms
   * @returns {Promise<Json>}
   */
  async closeAnswer(key, { client, session, model, start, end, tokens }) {
    if (this.ledger === null || this.codec === null) return { closed: true };
    if (tokens <= 0 || !PEER_ID_RE.test(client)) return this.codec.closeAnswer(null, null);
    const { receipt, serverSig } = await this.ledger.serverReceipt({ session: hex(session), model, start, end, tokens, client });
    this.receipts.delete(key);
    this.receipts.set(key, { receipt, canonical: canonicalJson(receipt), recording: false });
    while (this.receipts.size > MAX_PENDING_RECEIPTS) this.receipts.delete(/** @type {string} */ (this.receipts.keys().next().value));
    return this.codec.closeAnswer(receipt, serverSig);
  }

  /**
   * The answer to a GOSSIP frame on a session link: a client pushing its log, returning a
   * countersigned receipt, or sending one gossip message. As in Python, a forged or badly signed
   * receipt frame does not discard the waiting receipt: the genuine one is still recorded after it.
   * @param {string} client  the link's remote peer id
   * @param {string} key  the frame's session key (client and session id)
   * @param {unknown} meta
   * @returns {Promise<Json>}
   */
  async answer(client, key, meta) {
    const ledger = this.ledger;
    const codec = this.codec;
    if (ledger === null || codec === null) {
      const kind = /** @type {{kind?: unknown}} */ (meta)?.kind;
      if (kind !== 'push') throw new ExchangeRefusal(BAD_FRAME, 'this peer keeps no ledger');
      return { stored: 0 };
    }
    if (!PEER_ID_RE.test(client)) throw new ExchangeRefusal(BAD_FRAME, 'this peer keeps no ledger for this client');
    if (/** @type {{kind?: unknown}} */ (meta)?.kind === 'receipt') return this.#record(client, key, meta);
    const request = codec.parseRequest(meta); // LedgerError: answered bad_frame `ledger: ...`
    if (request.kind === 'push') {
      const stored = await ledger.acceptEntries(request.entries);
      if (ledger.log === undefined) return codec.pushAnswer(stored);
      const [head] = await ledger.log(client, 1); // the seq through which we hold the client's log now
      return codec.pushAnswer(stored, head === undefined ? 0 : seqOf(head));
    }
    if (request.kind === 'gossip' && ledger.gossipReceive !== undefined) {
      const replies = await ledger.gossipReceive(client, request.msg, { maxMessageBytes: CHANNEL_GOSSIP_BYTES });
      return codec.gossipAnswer(replies);
    }
    throw new ExchangeRefusal(BAD_FRAME, `unknown ledger request ${JSON.stringify(String(request.kind)).slice(0, 40)}`);
  }

  /**
   * OPEN's log (`OPEN_LOG`): `client`'s entries, stored as its push would be, before the hold OPEN names
   * is checked; how many were new. A malformed log throws `LedgerError` (answered `bad_frame`), with
   * nothing stored; without a ledger, or from a client without a peer id, the log is ignored.
   * @param {string} client  the link's remote peer id
   * @param {{[key: string]: unknown}} meta  OPEN's metadata
   * @returns {Promise<number>}
   */
  async takeLog(client, meta) {
    if (this.ledger === null || this.codec === null || !PEER_ID_RE.test(client) || !(OPEN_LOG in meta)) return 0;
    const entries = this.codec.parseOpenLog({ [OPEN_LOG]: meta[OPEN_LOG] });
    return entries === null ? 0 : this.ledger.acceptEntries(entries);
  }

  /**
   * @param {string} client
   * @param {string} key
   * @param {unknown} meta
   */
  async #record(client, key, meta) {
    const ledger = /** @type {ServerLedger} */ (this.ledger);
    const codec = /** @type {ExchangeCodec} */ (this.codec);
    const pending = this.receipts.get(key);
    const refused = () => new ExchangeRefusal(BAD_FRAME, 'no receipt of this session is waiting for that signature');
    if (pending === undefined || pending.recording) throw refused();
    /** @type {import('./exchange_codec.js').LedgerRequest} */
    let request;
    try {
      request = codec.parseRequest(meta);
    } catch {
      throw refused(); // not a receipt request at all (a signature that is not a string, say): not ours
    }
    let same = false;
    try {
      same = request.kind === 'receipt' && canonicalJson(request.receipt) === pending.canonical;
    } catch {
      same = false; // not canonical JSON (a float, say): not our receipt
    }
    if (!same || request.kind !== 'receipt') throw refused();
    // A bad signature is refused by the ledger and the receipt waits on for the right one; the
    // `recording` mark keeps a second copy of this frame from recording it twice meanwhile.
    pending.recording = true;
    try {
      await ledger.recordReceipt(pending.receipt, request.client_sig, request.server_sig);
    } finally {
      pending.recording = false;
    }
    this.receipts.delete(key);
    this.onReceipt(client);
    return codec.receiptAnswer(await receiptId(pending.receipt));
  }

  /** Forget every waiting receipt. */
  clear() {
    this.receipts.clear();
  }
}

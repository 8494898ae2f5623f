// @ts-check
/**
 * The client's side of the ledger exchange on its session links (used by `MeshClient`; Python's
 * `ClientExchange` in `python_peer/link_ledger.py`): before each session, appends a hold paying the
 * peer for it to the client's own log (a route's holds together: `writeHolds`) and pushes the log there (GOSSIP
 * `{kind: 'push', entries}` -> `{stored, held}`; OPEN names the hold: `python_peer/core/holds.py`);
 * once a peer said it holds the log through some seq (`held`), the next push there carries only the
 * entries written since, and the whole push again if the answer does not say `held` through the last
 * of them (Python's `ClientExchange.push`); a log longer than one push (the grant and the latest
 * entries skip some) reaches a peer by an anti-entropy exchange first, unless one ran with it less
 * than `gossipEveryMs` (30 s when periodic gossip is off) ago (Python's `ClientExchange.deliver`). To a
 * peer that takes our log in OPEN (its last answer to OPEN said `log: true`) and holds it up to a few
 * entries ago, those entries ride in OPEN itself instead (`deliver`, then `open`: one round trip
 * instead of two; refused for payment, the whole log is pushed and OPEN sent again, once). It
 * countersigns the receipt a peer proposes at CLOSE and returns it (`{kind: 'receipt', ...}` ->
 * `{recorded}`), runs anti-entropy with the peer after a recorded receipt (`{kind: 'gossip', msg}` ->
 * `{replies}`; at most once per peer per `gossipEveryMs`, `gossipMaxRequests` requests each), and once
 * a generation closed pushes its peers what they lack (`pushSoon`), so the next OPEN carries only holds.
 * Shared pieces: `exchange.js`.
 */

import { FrameType, canonicalJson } from '../protocol/wire.js';
import { PaymentRequiredError } from '../protocol/errors.js';
import { CHANNEL_GOSSIP_BYTES, OPEN_LOG, PUSH_BYTES, PUSH_ENTRIES } from '../protocol/constants.js';
import { BAD_FRAME, ExchangeRefusal, codecOf, hex, remember, seqOf } from './exchange.js';

const UTF8 = new TextEncoder();

/** @typedef {import('./exchange.js').ExchangeCodec} ExchangeCodec */
/** @typedef {import('./exchange.js').Logger} Logger */
/** @typedef {import('./exchange.js').Json} Json */

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
   * Our own entries after `seq`, oldest first; null when more than one push carries: more than
   * PUSH_ENTRIES, or more than fit a frame (PUSH_BYTES of canonical JSON: fork proofs, which a
   * neighbour's gossip can make us write by the dozen, weigh ten times a receipt), as Python's
   * `own_entries_after` (or when the ledger cannot list its latest entries).
   * @param {number} seq
   * @returns {Promise<unknown[] | null>}
   */
  async #entriesAfter(seq) {
    const ledger = /** @type {ClientLedger} */ (this.ledger);
    if (ledger.log === undefined) return null;
    const latest = await ledger.log(ledger.peerId, PUSH_ENTRIES);
    const head = latest.length ? seqOf(latest[0]) : 0;
    if (head - seq > PUSH_ENTRIES) return null;
    const after = latest.filter((entry) => seqOf(entry) > seq).reverse();
    let bytes = 0;
    for (const entry of after) bytes += UTF8.encode(canonicalJson(entry)).length + 1;
    return bytes > PUSH_BYTES ? null : after;
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

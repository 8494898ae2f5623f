// @ts-check
/**
 * The server's side of the ledger exchange on its session links (used by `SpanServer`; Python's
 * `ServerExchange` in `python_peer/link_ledger.py`): proposes the receipt at CLOSE, keeps it waiting
 * (at most MAX_PENDING_RECEIPTS) until the client returns it countersigned, and answers the three requests (a
 * push with `held`, the seq through which the node now holds the client's log, when the ledger can tell).
 * It also stores the log an OPEN carries (`OPEN_LOG`, as Python's `ServerExchange.admit`), as a push.
 * Either way the ledger is told which client pushed (`acceptEntries(entries, client)`): the entries
 * draw on that client's gossip entry budget, and a push over it is refused whole (`rate_limited`).
 * Shared pieces: `exchange.js`.
 */

import { canonicalJson } from '../protocol/wire.js';
import { CHANNEL_GOSSIP_BYTES, MAX_PENDING_RECEIPTS, OPEN_LOG } from '../protocol/constants.js';
import { BAD_FRAME, ExchangeRefusal, PEER_ID_RE, codecOf, hex, receiptId, seqOf } from './exchange.js';

/** @typedef {import('./exchange.js').ExchangeCodec} ExchangeCodec */
/** @typedef {import('./exchange.js').Json} Json */

/**
 * What the server side needs of the node's ledger: `BrowserLedger`. An error named `LedgerError` is
 * the client's bad input (the span server answers `bad_frame` with `ledger: ...`).
 * @typedef {object} ServerLedger
 * @property {ExchangeCodec} [codec]
 * @property {(entries: unknown, sender: string) => Promise<number> | number} acceptEntries  stores a push from
 *   `sender` (the client), first taken from its gossip entry budget (LedgerError `rate_limited` over it)
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
      const stored = await ledger.acceptEntries(request.entries, client);
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
    return entries === null ? 0 : this.ledger.acceptEntries(entries, client);
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

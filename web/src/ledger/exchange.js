// @ts-check
/**
 * The ledger exchange on a session link, one object per side (the mirror of Python's link ledger,
 * `python_peer/link_ledger.py`): `ClientExchange` (`client_exchange.js`, used by `MeshClient`) and
 * `ServerExchange` (`server_exchange.js`, used by `SpanServer`). This module holds what both sides share:
 * the refusal a ledger request gets, the bounded per-peer tables, the receipt id and the codec lookup.
 *
 * Every message is built and parsed by `python_peer/core/ledger_exchange.py` through an
 * `ExchangeCodec` (the ledger's, under Pyodide, unless one is given). Without a ledger nothing goes
 * through Python: a client pushes and countersigns nothing; a server answers a push `{stored: 0}` (so
 * clients need not special-case it), refuses other requests, and proposes no receipt.
 */

import { signingBytes } from '../identity/identity.js';
import { RECEIPT_CONTEXT } from '../protocol/constants.js';

export const PEER_ID_RE = /^[0-9a-f]{64}$/;
export const BAD_FRAME = 'bad_frame';
/** Peers whose `held` a client remembers, the least recently learnt forgotten first (`MAX_GOSSIPED` in Python). */
const MAX_HELD = 1024;

/** The `seq` of a ledger entry (a JSON object as `Entry.to_dict()`). @param {unknown} entry */
export const seqOf = (entry) => Number(/** @type {{seq?: unknown}} */ (entry).seq);

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
export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * The receipt id of `docs/ledger.md`: the sha256 of the bytes both parties sign.
 * @param {Json} receipt
 */
export async function receiptId(receipt) {
  const bytes = /** @type {Uint8Array<ArrayBuffer>} */ (signingBytes(RECEIPT_CONTEXT, receipt));
  return hex(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes)));
}

/**
 * The codec a side uses: `codec`, else the ledger's; null without a ledger.
 * @param {{codec?: ExchangeCodec} | null} ledger
 * @param {ExchangeCodec | null | undefined} codec
 */
export function codecOf(ledger, codec) {
  if (ledger === null) return null;
  const found = codec ?? ledger.codec ?? null;
  if (found === null) throw new TypeError('a ledger exchange needs an ExchangeCodec (the ledger has none)');
  return found;
}

// @ts-check
/**
 * The signaling protocol's messages as the browser checks them: the errors of signaling (each with
 * the `code` a node puts in its `error` message) and signed announcements, parsed and verified as
 * Python's `Announcement.from_dict` and the peer's lookup do (`python_peer/core/canonical.py`).
 *
 * Errors::
 *
 *     AI4AllError > CoreError (web/src/protocol/errors.js)
 *     └── SignalingError        `code` is the code of the `error` message on the wire
 *         ├── MessageError, AnnouncementError
 *         ├── RemoteSignalingError   a node answered with `error`; `code` says why
 *         └── SignalClientError      closed, timed out, or no node reachable
 */

import {
  ANNOUNCE_CONTEXT,
  MAX_CLOCK_SKEW_MS,
  MAX_COUNTER,
  MAX_LAYER,
  MAX_SAFE_INT,
  MAX_SEQ_AHEAD_MS,
  MAX_SERVES,
  MAX_SIGNALING_URLS,
  MAX_TTL_MS,
  MIN_TTL_MS,
  PROTOCOL_VERSION,
} from '../protocol/constants.js';
import { CoreError } from '../protocol/errors.js';
import { isPlainObject } from '../protocol/values.js';
import { PEER_ID_RE, verifyBody } from '../identity/identity.js';

const MODEL_RE = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;
/** A signaling node's URL, as announcements and the client's configuration carry it. */
export const URL_RE = /^wss?:\/\/[\x21-\x7e]{1,250}$/;
const ANNOUNCEMENT_KEYS = [
  'v', 'peer_id', 'kind', 'seq', 'issued_ms', 'expires_ms', 'serves', 'throughput_milli', 'kv_free_tokens',
  'signaling',
];
const SPAN_KEYS = ['model', 'start', 'end'];

/** @typedef {{info(msg: string): void, warn(msg: string): void}} Logger */

/** Base of signaling failures; `code` is the code a node puts in its `error` message. */
export class SignalingError extends CoreError {
  /**
   * @param {string} message
   * @param {{code?: string}} [options]
   */
  constructor(message, { code } = {}) {
    super(message);
    /** @type {string} */
    this.code = code ?? 'bad_message';
  }
}
/** A message that is not JSON, of an unknown type, or malformed. */
export class MessageError extends SignalingError {}
/** An announcement body that is malformed, out of bounds or expired. */
export class AnnouncementError extends SignalingError {
  /**
   * @param {string} message
   * @param {{code?: string}} [options]
   */
  constructor(message, { code } = {}) {
    super(message, { code: code ?? 'bad_announcement' });
  }
}
/** A signaling node answered with an `error` message: `code` says why. */
export class RemoteSignalingError extends SignalingError {}
/** The client is closed, a request timed out, or no signaling node was reachable. */
export class SignalClientError extends SignalingError {}

/**
 * @typedef {{model: string, start: number, end: number}} ServedSpan
 * @typedef {object} Announcement
 * @property {number} v
 * @property {string} peer_id
 * @property {'native' | 'browser'} kind
 * @property {number} seq
 * @property {number} issued_ms
 * @property {number} expires_ms
 * @property {ServedSpan[]} serves
 * @property {number} throughput_milli
 * @property {number} kv_free_tokens
 * @property {string[]} signaling
 */

/**
 * What a peer signs (`BYE_CONTEXT`) to withdraw its announcement `seq`, Python's `bye_body`: a `bye`
 * carries the signature to the node, and the node's `gone` carries it on to its siblings.
 * @param {string} peerId
 * @param {number} seq
 */
export function byeBody(peerId, seq) {
  return { peer_id: peerId, seq };
}

/**
 * @param {string} name
 * @param {unknown} value
 * @param {number} low
 * @param {number} high
 */
function checkInt(name, value, low, high) {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw new AnnouncementError(`${name} must be an integer, not ${typeof value}`);
  }
  if (value < low || value > high) throw new AnnouncementError(`${name} = ${value} is outside [${low}, ${high}]`);
}

/**
 * @param {string} what
 * @param {unknown} data
 * @param {readonly string[]} keys
 * @returns {{[key: string]: unknown}}
 */
function exactKeys(what, data, keys) {
  if (!isPlainObject(data)) throw new AnnouncementError(`${what} must be a JSON object`);
  const own = Object.keys(data);
  if (own.length !== keys.length || !keys.every((k) => Object.prototype.hasOwnProperty.call(data, k))) {
    throw new AnnouncementError(`${what} must have exactly the fields ${keys.join(', ')}`);
  }
  return data;
}

/**
 * Validate an announcement body received as JSON (Python's `Announcement.from_dict`).
 * @param {unknown} data
 * @returns {Announcement}
 */
export function parseAnnouncement(data) {
  const body = exactKeys('an announcement body', data, ANNOUNCEMENT_KEYS);
  checkInt('v', body.v, PROTOCOL_VERSION, PROTOCOL_VERSION);
  if (typeof body.peer_id !== 'string' || !PEER_ID_RE.test(body.peer_id)) {
    throw new AnnouncementError('peer_id must be 64 lowercase hex digits (an Ed25519 public key)');
  }
  if (body.kind !== 'native' && body.kind !== 'browser') throw new AnnouncementError('kind is not native or browser');
  checkInt('seq', body.seq, 0, MAX_SAFE_INT);
  checkInt('issued_ms', body.issued_ms, 0, MAX_SAFE_INT);
  const issued = /** @type {number} */ (body.issued_ms);
  if (/** @type {number} */ (body.seq) > issued + MAX_SEQ_AHEAD_MS) {
    // A seq far past its issue time would make the peer's later announcements stale until it expired.
    throw new AnnouncementError(
      `seq ${body.seq} runs more than ${MAX_SEQ_AHEAD_MS} ahead of issued_ms ${issued}: announce with seq = max(previous seq + 1, now in ms)`,
    );
  }
  checkInt('expires_ms', body.expires_ms, issued + MIN_TTL_MS, issued + MAX_TTL_MS);
  checkInt('throughput_milli', body.throughput_milli, 0, MAX_COUNTER);
  checkInt('kv_free_tokens', body.kv_free_tokens, 0, MAX_COUNTER);
  if (!Array.isArray(body.serves) || body.serves.length > MAX_SERVES) {
    throw new AnnouncementError(`serves must be a list of at most ${MAX_SERVES} spans`);
  }
  for (const item of body.serves) {
    const span = exactKeys('a served span', item, SPAN_KEYS);
    if (typeof span.model !== 'string' || !MODEL_RE.test(span.model)) {
      throw new AnnouncementError(`model ${JSON.stringify(span.model)} is not a model name`);
    }
    checkInt('start', span.start, 0, MAX_LAYER - 1);
    checkInt('end', span.end, /** @type {number} */ (span.start) + 1, MAX_LAYER);
  }
  if (!Array.isArray(body.signaling) || body.signaling.length > MAX_SIGNALING_URLS) {
    throw new AnnouncementError(`signaling must be a list of at most ${MAX_SIGNALING_URLS} URLs`);
  }
  for (const url of body.signaling) {
    if (typeof url !== 'string' || !URL_RE.test(url)) throw new AnnouncementError('a signaling URL is not ws:// or wss://');
  }
  return /** @type {Announcement} */ (/** @type {unknown} */ (body));
}

/**
 * One `{body, sig}` of a `peers` reply, checked: schema, signature by `body.peer_id`, freshness.
 * @param {unknown} item
 * @param {number} nowMs
 * @returns {Promise<Announcement>}
 */
export async function verifyPeerItem(item, nowMs) {
  if (!isPlainObject(item)) throw new MessageError('peer item is not an object');
  const ann = parseAnnouncement(item.body);
  await verifyBody(ann.peer_id, ANNOUNCE_CONTEXT, item.body, item.sig);
  if (ann.expires_ms <= nowMs) throw new AnnouncementError('announcement expired', { code: 'expired' });
  if (ann.issued_ms > nowMs + MAX_CLOCK_SKEW_MS) throw new AnnouncementError('announcement issued in the future');
  return ann;
}

/**
 * The verified announcements of a `peers` list that serve a block of `model` in `[start, end)`;
 * the rest are dropped with a warning (a node can drop entries, never forge them).
 * @param {unknown} items
 * @param {string} model
 * @param {number} start
 * @param {number} end
 * @param {{nowMs?: number, limit?: number, log?: Logger}} [options]
 */
export async function verifyPeers(items, model, start, end, { nowMs = Date.now(), limit = 64, log = console } = {}) {
  if (!Array.isArray(items)) throw new MessageError('peers reply without a peers list');
  /** @type {Announcement[]} */
  const found = [];
  for (const item of items.slice(0, limit)) {
    let ann;
    try {
      ann = await verifyPeerItem(item, nowMs);
    } catch (err) {
      if (!(err instanceof CoreError)) throw err;
      log.warn(`dropping an announcement from a lookup reply: ${err.message}`);
      continue;
    }
    if (ann.serves.some((s) => s.model === model && s.start < end && start < s.end)) found.push(ann);
  }
  return found;
}

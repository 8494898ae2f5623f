// @ts-check
/**
 * The browser's side of signaling: a mirror of `python_peer/signal_client.py` on WebCrypto and the
 * browser WebSocket. `docs/signaling.md` is the protocol; this module imports nothing of the server.
 *
 * `Identity` holds an Ed25519 key pair (peer id = hex of the raw public key) and can be exported and
 * imported (JWK or PKCS8) so a storage layer can keep it. `SignalClient` connects to the first
 * reachable URL of its list, proves it holds its key (signing the hello nonce), announces itself as a
 * "browser" peer and re-announces every `reannounceMs`; when the node goes away it fails over to the
 * next URL at once, then backs off exponentially (with jitter) once every URL failed in a row.
 * Announcements from `lookup` and incoming signals are verified against the signer's key, so a node
 * can drop messages but not forge them. No DOM: it runs in a page or a Worker.
 *
 * Errors::
 *
 *     AI4AllError > CoreError (web/src/protocol/wire.js)
 *     ├── CanonicalError        a value with no canonical JSON form
 *     ├── IdentityError         key material that cannot be generated, imported or exported
 *     │   └── SignatureError    a signature that does not verify
 *     └── SignalingError        `code` is the code of the `error` message on the wire
 *         ├── MessageError, AnnouncementError
 *         ├── RemoteSignalingError   a node answered with `error`; `code` says why
 *         └── SignalClientError      closed, timed out, or no node reachable
 */

import { CoreError, MetadataError, canonicalJson } from '../protocol/wire.js';
import { MAX_LAYER } from '../protocol/constants.js';

export const PROTOCOL_VERSION = 1;
export const ANNOUNCE_CONTEXT = 'ai4all/announce/v1';
export const SIGNAL_CONTEXT = 'ai4all/signal/v1';
export const AUTH_CONTEXT = 'ai4all/auth/v1';
export const MAX_SAFE_INT = 2 ** 53 - 1;
export const MAX_DEPTH = 32;
export const MIN_TTL_MS = 1_000;
export const MAX_TTL_MS = 600_000;
export const MAX_CLOCK_SKEW_MS = 60_000;
export const MAX_SIGNAL_AGE_MS = 60_000;
export const MAX_SIGNAL_PAYLOAD_BYTES = 32 * 1024;
export const MAX_SERVES = 32;
export const MAX_SIGNALING_URLS = 8;
export const MAX_COUNTER = 10 ** 15;
export const MAX_PENDING = 256;
export const MAX_REPLY_BYTES = 1024 * 1024;

const PEER_ID_RE = /^[0-9a-f]{64}$/;
const SIGNATURE_RE = /^[0-9a-f]{128}$/;
const MODEL_RE = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;
const URL_RE = /^wss?:\/\/[\x21-\x7e]{1,250}$/;
const ANNOUNCEMENT_KEYS = [
  'v', 'peer_id', 'kind', 'seq', 'issued_ms', 'expires_ms', 'serves', 'throughput_milli', 'kv_free_tokens',
  'signaling',
];
const SPAN_KEYS = ['model', 'start', 'end'];
const UTF8 = new TextEncoder();
const VERIFY_KEY_CACHE = 256;

// --- errors -----------------------------------------------------------------------------------------

/** A value with no canonical JSON form (a float, NaN, an unsafe integer, too deep, not plain data). */
export class CanonicalError extends CoreError {}
/** Key material that cannot be generated, imported or exported. */
export class IdentityError extends CoreError {}
/** A signature that does not verify: forged, altered, or made by another key. */
export class SignatureError extends IdentityError {}

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

// --- canonical JSON and signing bytes ---------------------------------------------------------------

/**
 * @param {unknown} value
 * @returns {value is {[key: string]: unknown}}
 */
function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * The rules of docs/signaling.md that the wire codec's writer does not check itself.
 * @param {unknown} value
 * @param {number} depth
 */
function checkCanonical(value, depth) {
  if (depth > MAX_DEPTH) throw new CanonicalError(`value nested deeper than ${MAX_DEPTH} levels`);
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return;
  if (typeof value === 'number') {
    if (!Number.isInteger(value) || Math.abs(value) > MAX_SAFE_INT) {
      throw new CanonicalError(`${value} is not an integer within ±(2**53 - 1); signed bodies hold no floats`);
    }
    return;
  }
  if (Array.isArray(value)) {
    for (const item of value) checkCanonical(item, depth + 1);
    return;
  }
  if (isPlainObject(value)) {
    for (const item of Object.values(value)) checkCanonical(item, depth + 1);
    return;
  }
  throw new CanonicalError(`a ${typeof value} has no JSON form`);
}

/**
 * Canonical JSON of `value` as UTF-8: Python's `canonical_bytes`, written by the wire codec's
 * Python-compatible writer (one writer for frames and signatures).
 * @param {unknown} value
 * @returns {Uint8Array}
 */
export function canonicalBytes(value) {
  checkCanonical(value, 0);
  if (!isPlainObject(value)) throw new CanonicalError('only objects are signed');
  try {
    return UTF8.encode(canonicalJson(value));
  } catch (err) {
    if (err instanceof MetadataError || err instanceof CoreError) {
      throw new CanonicalError(`value has no canonical JSON form: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/**
 * The bytes a signature covers: `context`, a newline, the canonical JSON of `body`.
 * @param {string} context
 * @param {unknown} body
 */
export function signingBytes(context, body) {
  const head = UTF8.encode(`${context}\n`);
  const tail = canonicalBytes(body);
  const out = new Uint8Array(head.length + tail.length);
  out.set(head, 0);
  out.set(tail, head.length);
  return out;
}

/** @param {Uint8Array} bytes */
export const toHex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
/** @param {string} text */
const fromHex = (text) => Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));

// --- identity ---------------------------------------------------------------------------------------

/** @typedef {{format: 'jwk', key: JsonWebKey} | {format: 'pkcs8', key: string}} ExportedIdentity */

/** An Ed25519 key pair; the peer id is the hex of the raw public key. */
export class Identity {
  /**
   * Use `Identity.generate()` or `Identity.importIdentity()`.
   * @param {CryptoKey} privateKey
   * @param {string} peerId
   */
  constructor(privateKey, peerId) {
    this.privateKey = privateKey;
    this.peerId = peerId;
  }

  /** A fresh key pair (extractable, so `exportIdentity` can hand it to storage). */
  static async generate() {
    try {
      const pair = /** @type {CryptoKeyPair} */ (
        await crypto.subtle.generateKey({ name: 'Ed25519' }, true, ['sign', 'verify'])
      );
      const raw = new Uint8Array(await crypto.subtle.exportKey('raw', pair.publicKey));
      return new Identity(pair.privateKey, toHex(raw));
    } catch (err) {
      throw new IdentityError(`this browser cannot make Ed25519 keys: ${err}`, { cause: err });
    }
  }

  /**
   * The identity `exportIdentity` wrote.
   * @param {ExportedIdentity} data
   */
  static async importIdentity(data) {
    try {
      const algo = { name: 'Ed25519' };
      const key =
        data.format === 'jwk'
          ? await crypto.subtle.importKey('jwk', data.key, algo, true, ['sign'])
          : data.format === 'pkcs8'
            ? await crypto.subtle.importKey('pkcs8', fromHex(data.key), algo, true, ['sign'])
            : null;
      if (key === null) throw new TypeError(`format ${JSON.stringify(data.format)} is not jwk or pkcs8`);
      const jwk = await crypto.subtle.exportKey('jwk', key);
      if (typeof jwk.x !== 'string') throw new TypeError('the key has no public part');
      const raw = Uint8Array.from(atob(jwk.x.replace(/-/g, '+').replace(/_/g, '/')), (c) => c.charCodeAt(0));
      if (raw.length !== 32) throw new TypeError(`public key of ${raw.length} bytes, not 32`);
      return new Identity(key, toHex(raw));
    } catch (err) {
      throw new IdentityError(`cannot import the identity: ${err}`, { cause: err });
    }
  }

  /**
   * The private key, for storage: `{format: 'jwk', key}` or `{format: 'pkcs8', key: <hex>}`.
   * @param {'jwk' | 'pkcs8'} [format]
   * @returns {Promise<ExportedIdentity>}
   */
  async exportIdentity(format = 'jwk') {
    if (format === 'jwk') return { format, key: await crypto.subtle.exportKey('jwk', this.privateKey) };
    if (format === 'pkcs8') {
      return { format, key: toHex(new Uint8Array(await crypto.subtle.exportKey('pkcs8', this.privateKey))) };
    }
    throw new IdentityError(`cannot export as ${JSON.stringify(format)}: use "jwk" or "pkcs8"`);
  }

  /**
   * Sign raw bytes; 128 hex digits.
   * @param {Uint8Array} bytes
   */
  async sign(bytes) {
    return toHex(new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, this.privateKey, bytes)));
  }

  /**
   * Sign `signingBytes(context, body)`.
   * @param {string} context
   * @param {unknown} body
   */
  async signBody(context, body) {
    return this.sign(signingBytes(context, body));
  }
}

/** @type {Map<string, CryptoKey>} peer id -> imported public key, least recently used first */
const verifyKeys = new Map();

/**
 * Check that `signature` (hex) over `bytes` was made by `peerId`; throws SignatureError.
 * @param {string} peerId
 * @param {Uint8Array} bytes
 * @param {unknown} signature
 */
export async function verify(peerId, bytes, signature) {
  if (typeof peerId !== 'string' || !PEER_ID_RE.test(peerId)) {
    throw new SignatureError('the signer is not a peer id (64 lowercase hex digits)');
  }
  if (typeof signature !== 'string' || !SIGNATURE_RE.test(signature)) {
    throw new SignatureError('a signature is 128 lowercase hex digits');
  }
  let key = verifyKeys.get(peerId);
  if (key === undefined) {
    try {
      key = await crypto.subtle.importKey('raw', fromHex(peerId), { name: 'Ed25519' }, false, ['verify']);
    } catch (err) {
      throw new SignatureError(`cannot use the key of peer ${peerId.slice(0, 12)}…: ${err}`, { cause: err });
    }
    if (verifyKeys.size >= VERIFY_KEY_CACHE) verifyKeys.delete(/** @type {string} */ (verifyKeys.keys().next().value));
  }
  verifyKeys.delete(peerId);
  verifyKeys.set(peerId, key);
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, fromHex(signature), bytes);
  if (!ok) throw new SignatureError(`signature does not match the signed bytes for peer ${peerId.slice(0, 12)}…`);
}

/**
 * `verify` over `signingBytes(context, body)`; a body with no canonical form fails too.
 * @param {string} peerId
 * @param {string} context
 * @param {unknown} body
 * @param {unknown} signature
 */
export async function verifyBody(peerId, context, body, signature) {
  let bytes;
  try {
    bytes = signingBytes(context, body);
  } catch (err) {
    throw new SignatureError(`signed body has no canonical form: ${err}`, { cause: err });
  }
  await verify(peerId, bytes, signature);
}

// --- announcements ----------------------------------------------------------------------------------

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

// --- the client -------------------------------------------------------------------------------------

/** @typedef {{info(msg: string): void, warn(msg: string): void}} Logger */
/** @typedef {{sender: string, payload: {[key: string]: unknown}, tsMs: number}} IncomingSignal */

/**
 * @typedef {object} SignalClientConfig  times in ms
 * @property {string[]} urls
 * @property {ServedSpan[]} [serves]
 * @property {number} [throughputMilli]
 * @property {number} [kvFreeTokens]
 * @property {number} [ttlMs]  announcement lifetime (120 000)
 * @property {number} [reannounceMs]  renewal period, well under ttlMs (40 000)
 * @property {number} [requestTimeoutMs]
 * @property {number} [connectTimeoutMs]
 * @property {number} [backoffInitialMs]
 * @property {number} [backoffMaxMs]
 * @property {number} [maxUrls]  configured plus learned from hellos (16)
 * @property {number} [incomingQueue]  signals waiting to be read; the oldest is dropped past it (256)
 * @property {boolean} [learnUrls]
 * @property {(signal: IncomingSignal) => void} [onSignal]
 * @property {Logger} [log]
 */

export const SignalClientState = Object.freeze({
  NEW: 'new',
  CONNECTING: 'connecting', // dialing a node, reading its hello, announcing
  CONNECTED: 'connected', // announced on a live connection
  BACKOFF: 'backoff', // every URL failed in a row; waiting before the next round
  CLOSING: 'closing',
  CLOSED: 'closed',
});

/** The websocket a request went out on closed before the answer: retry on the next one. */
class LinkLost extends Error {}

/** A settable flag whose `wait()` resolves while it is set. */
class Flag {
  constructor() {
    this.isSet = false;
    /** @type {(() => void)[]} */
    this.waiters = [];
  }
  set() {
    this.isSet = true;
    for (const wake of this.waiters.splice(0)) wake();
  }
  clear() {
    this.isSet = false;
  }
  /** @returns {Promise<void>} */
  wait() {
    return this.isSet ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {() => Error} onTimeout
 * @returns {Promise<T>}
 */
function withTimeout(promise, ms, onTimeout) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), Math.max(0, ms));
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, expiry])).finally(() => clearTimeout(timer));
}

/** One websocket to one node, with the requests waiting for their answers on it. */
class Link {
  /**
   * @param {string} url
   * @param {WebSocket} ws
   * @param {(message: {[key: string]: unknown}) => void} onSignal
   * @param {Logger} log
   */
  constructor(url, ws, onSignal, log) {
    this.url = url;
    this.ws = ws;
    this.nodeId = '';
    this.nonce = '';
    /** @type {{[key: string]: unknown} | null} */
    this.hello = null;
    /** @type {Map<number, {resolve: (m: {[key: string]: unknown}) => void, reject: (e: Error) => void}>} */
    this.pending = new Map();
    this.closed = new Flag();
    this.helloSeen = new Flag();
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string' || event.data.length > MAX_REPLY_BYTES) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        log.warn(`${url} sent a message that is not JSON`);
        return;
      }
      if (!isPlainObject(message)) return;
      if (this.hello === null) {
        this.hello = message;
        this.helloSeen.set();
      } else if (message.type === 'signal') {
        onSignal(message);
      } else {
        const waiter = typeof message.id === 'number' ? this.pending.get(message.id) : undefined;
        if (waiter) waiter.resolve(message);
        else if (message.type === 'error') log.warn(`${url}: error ${message.code}: ${message.message}`);
      }
    };
    ws.onclose = () => this.lost();
    ws.onerror = () => this.lost();
  }

  /**
   * Send `message` under `id` and wait for the answer carrying the same id.
   * @param {{[key: string]: unknown}} message
   * @param {number} id
   * @param {number} timeoutMs
   * @returns {Promise<{[key: string]: unknown}>}
   */
  async request(message, id, timeoutMs) {
    if (this.closed.isSet) throw new LinkLost(this.url);
    if (this.pending.size >= MAX_PENDING) {
      throw new SignalClientError(`${MAX_PENDING} requests are already waiting on ${this.url}`);
    }
    /** @type {Promise<{[key: string]: unknown}>} */
    const answer = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    let reply;
    try {
      this.ws.send(JSON.stringify({ ...message, id }));
      reply = await withTimeout(answer, timeoutMs, () => new SignalClientError(`${message.type} timed out on ${this.url}`));
    } finally {
      this.pending.delete(id);
    }
    if (reply.type === 'error') {
      const code = typeof reply.code === 'string' ? reply.code : 'internal';
      throw new RemoteSignalingError(`${this.url}: ${reply.message}`, { code });
    }
    return reply;
  }

  lost() {
    this.closed.set();
    this.helloSeen.set();
    for (const waiter of this.pending.values()) waiter.reject(new LinkLost(this.url));
    this.pending.clear();
  }

  close() {
    this.lost();
    try {
      this.ws.close(1000);
    } catch {
      // already closed
    }
  }
}

/** A browser peer's connection to the signaling mesh: announce, look up peers, exchange signals. */
export class SignalClient {
  /**
   * Use `await SignalClient.create(...)`, which also connects.
   * @param {Identity} identity
   * @param {SignalClientConfig} config
   */
  constructor(identity, config) {
    const urls = [...new Set(config.urls ?? [])];
    if (!urls.length) throw new SignalClientError('give at least one signaling URL (ws://HOST:PORT)');
    for (const url of urls) {
      if (typeof url !== 'string' || !URL_RE.test(url)) {
        throw new SignalClientError(`${JSON.stringify(url)} is not a signaling URL: give ws://HOST:PORT`);
      }
    }
    this.identity = identity;
    this.config = {
      serves: [],
      throughputMilli: 0,
      kvFreeTokens: 0,
      ttlMs: 120_000,
      reannounceMs: 40_000,
      requestTimeoutMs: 5_000,
      connectTimeoutMs: 5_000,
      backoffInitialMs: 100,
      backoffMaxMs: 10_000,
      maxUrls: 16,
      incomingQueue: 256,
      learnUrls: true,
      ...config,
    };
    const { ttlMs, reannounceMs } = this.config;
    if (!(ttlMs >= MIN_TTL_MS && ttlMs <= MAX_TTL_MS)) throw new SignalClientError(`ttlMs = ${ttlMs} is outside [${MIN_TTL_MS}, ${MAX_TTL_MS}]`);
    if (!(reannounceMs > 0 && reannounceMs < ttlMs)) throw new SignalClientError(`reannounceMs must be between 0 and ttlMs`);
    /** @type {Logger} */
    this.log = config.log ?? console;
    /** @type {string[]} */
    this.urlList = urls;
    this.urlIndex = 0;
    /** @type {string} */
    this.state = SignalClientState.NEW;
    /** @type {Link | null} */
    this.link = null;
    this.connected = new Flag();
    this.stopped = new Flag();
    this.seq = 0;
    this.nextId = 1;
    this.lastError = 'not tried yet';
    /** @type {IncomingSignal[]} */
    this.incoming = [];
    /** @type {((s: IncomingSignal | null) => void)[]} */
    this.readers = [];
    /** @type {Promise<void> | null} */
    this.manager = null;
    /** Signals are verified one after another, so they are delivered in the order they came. */
    this.verifying = Promise.resolve();
    this.verifyingCount = 0;
  }

  /**
   * Start connecting; with `wait`, return once announced or throw SignalClientError.
   * @param {Identity} identity
   * @param {SignalClientConfig} config
   * @param {{wait?: boolean}} [options]
   */
  static async create(identity, config, { wait = true } = {}) {
    const client = new SignalClient(identity, config);
    client.manager = client.run().catch((err) => {
      client.lastError = `connection manager failed: ${err}`;
      client.log.warn(`signal client ${client.peerId.slice(0, 8)}: ${client.lastError}`);
    });
    if (wait) {
      try {
        await client.waitConnected(client.config.connectTimeoutMs);
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  get peerId() {
    return this.identity.peerId;
  }

  /** The node this client is announced on now, if any. */
  get url() {
    return this.link !== null && this.connected.isSet ? this.link.url : null;
  }

  /** Every URL this client may fail over to: configured, then learned. */
  get urls() {
    return [...this.urlList];
  }

  /** @param {string} state */
  setState(state) {
    if (state !== this.state) {
      this.log.info(`signal client ${this.peerId.slice(0, 8)}: ${this.state} -> ${state}`);
      this.state = state;
    }
  }

  checkOpen() {
    if (this.state === SignalClientState.CLOSING || this.state === SignalClientState.CLOSED) {
      throw new SignalClientError(`signal client is ${this.state}; create a new one`);
    }
  }

  /** @param {number} [timeoutMs] wait until announced on some node */
  async waitConnected(timeoutMs = this.config.connectTimeoutMs) {
    this.checkOpen();
    await withTimeout(this.connected.wait(), timeoutMs, () => new SignalClientError(
      `no signaling node reachable among ${this.urlList.join(', ')}: ${this.lastError}`,
    ));
    this.checkOpen();
  }

  // --- public API -----------------------------------------------------------------------------------

  /**
   * Peers serving any block of `model` in `[start, end)`, verified, best first.
   * @param {string} model
   * @param {number} start
   * @param {number} end
   * @param {{limit?: number}} [options]
   */
  async lookup(model, start, end, { limit = 32 } = {}) {
    const reply = await this.call({ type: 'lookup', model, start, end, limit });
    return verifyPeers(reply.peers, model, start, end, { limit, log: this.log });
  }

  /**
   * Send SDP or ICE to `peerId`, signed end to end; RemoteSignalingError (`unknown_peer`) if no node knows it.
   * @param {string} peerId
   * @param {{[key: string]: unknown}} payload
   */
  async sendSignal(peerId, payload) {
    if (typeof peerId !== 'string' || !PEER_ID_RE.test(peerId)) throw new MessageError('to must be a peer id');
    if (!isPlainObject(payload)) throw new MessageError('payload must be a JSON object');
    const size = canonicalBytes(payload).length;
    if (size > MAX_SIGNAL_PAYLOAD_BYTES) {
      throw new MessageError(`payload is ${size} bytes of canonical JSON, over ${MAX_SIGNAL_PAYLOAD_BYTES}`, { code: 'too_large' });
    }
    const body = { from: this.peerId, to: peerId, ts_ms: Date.now(), payload };
    const sig = await this.identity.signBody(SIGNAL_CONTEXT, body);
    await this.call({ type: 'signal', ...body, sig });
  }

  /**
   * The next verified signal for this peer; SignalClientError once the client is closed.
   * @returns {Promise<IncomingSignal>}
   */
  async recvSignal() {
    const queued = this.incoming.shift();
    if (queued !== undefined) return queued;
    if (this.state === SignalClientState.CLOSED) throw new SignalClientError('signal client is closed');
    const next = await new Promise((resolve) => this.readers.push(resolve));
    if (next === null) throw new SignalClientError('signal client is closed');
    return next;
  }

  /** Verified signals for this peer, until the client closes. @returns {AsyncGenerator<IncomingSignal>} */
  async *signals() {
    while (true) {
      try {
        yield await this.recvSignal();
      } catch (err) {
        if (err instanceof SignalClientError) return;
        throw err;
      }
    }
  }

  /**
   * Change what this peer announces, and announce it now if connected.
   * @param {{serves?: ServedSpan[], throughputMilli?: number, kvFreeTokens?: number}} changes
   */
  async update(changes) {
    this.config = { ...this.config, ...changes };
    const link = this.link;
    if (link !== null && this.connected.isSet) {
      try {
        await this.announce(link);
      } catch (err) {
        if (!(err instanceof LinkLost)) throw err; // the next connection announces the new values anyway
      }
    }
  }

  /** Say `bye` (so the directory forgets this peer now, not at expiry), then close. */
  async close() {
    if (this.state === SignalClientState.CLOSING || this.state === SignalClientState.CLOSED) return;
    const link = this.connected.isSet ? this.link : null;
    this.setState(SignalClientState.CLOSING);
    this.stopped.set();
    if (link !== null) {
      try {
        await link.request({ type: 'bye' }, this.nextId++, 1_000);
      } catch {
        // leaving anyway: without bye the entry lives until it expires
      }
      link.close();
    }
    this.link?.close();
    this.link = null;
    await this.manager;
    this.setState(SignalClientState.CLOSED);
    this.connected.set(); // wakes every waiting request, which then sees the closed state
    for (const wake of this.readers.splice(0)) wake(null);
  }

  // --- requests -------------------------------------------------------------------------------------

  /**
   * Send a request on the live connection, riding over failovers until `requestTimeoutMs`.
   * @param {{[key: string]: unknown, type: string}} message
   */
  async call(message) {
    this.checkOpen();
    const deadline = Date.now() + this.config.requestTimeoutMs;
    const timeout = () => new SignalClientError(
      `${message.type} got no answer within ${this.config.requestTimeoutMs} ms ` +
        `(state ${this.state}; last error: ${this.lastError})`,
    );
    while (true) {
      await withTimeout(this.connected.wait(), deadline - Date.now(), timeout);
      this.checkOpen();
      const link = this.link;
      if (link === null) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        continue;
      }
      try {
        return await link.request(message, this.nextId++, deadline - Date.now());
      } catch (err) {
        if (!(err instanceof LinkLost)) throw err;
        if (Date.now() >= deadline) throw timeout();
        await new Promise((resolve) => setTimeout(resolve, 10)); // the manager notices and fails over
      }
    }
  }

  /** @param {Link} link */
  async announce(link) {
    const cfg = this.config;
    const now = Date.now();
    this.seq = Math.max(this.seq + 1, now);
    const body = {
      v: PROTOCOL_VERSION,
      peer_id: this.peerId,
      kind: 'browser',
      seq: this.seq,
      issued_ms: now,
      expires_ms: now + Math.round(cfg.ttlMs),
      serves: cfg.serves.map(({ model, start, end }) => ({ model, start, end })),
      throughput_milli: cfg.throughputMilli,
      kv_free_tokens: cfg.kvFreeTokens,
      signaling: [link.url],
    };
    parseAnnouncement(body); // refuse a bad configuration here, with a readable message
    const message = {
      type: 'announce',
      body,
      sig: await this.identity.signBody(ANNOUNCE_CONTEXT, body),
      proof: await this.identity.signBody(AUTH_CONTEXT, { node_id: link.nodeId, nonce: link.nonce }),
    };
    await link.request(message, this.nextId++, cfg.requestTimeoutMs);
  }

  // --- the connection manager -----------------------------------------------------------------------

  /** Connect, serve, fail over; back off once every URL has failed in a row. Runs until closed. */
  async run() {
    let backoff = this.config.backoffInitialMs;
    let failures = 0;
    while (!this.stopped.isSet) {
      const url = this.urlList[this.urlIndex % this.urlList.length];
      this.setState(SignalClientState.CONNECTING);
      let link;
      try {
        link = await this.open(url);
      } catch (err) {
        if (this.stopped.isSet) return;
        this.lastError = `${url}: ${err instanceof Error ? err.message || err.name : err}`;
        this.log.info(`signaling node ${url} failed: ${this.lastError}`);
        this.urlIndex += 1;
        failures += 1;
        if (failures >= this.urlList.length) {
          this.setState(SignalClientState.BACKOFF);
          await this.sleep(backoff * (0.5 + Math.random()));
          backoff = Math.min(backoff * 2, this.config.backoffMaxMs);
          failures = 0;
        }
        continue;
      }
      if (this.stopped.isSet) {
        link.close();
        return;
      }
      backoff = this.config.backoffInitialMs;
      failures = 0;
      this.link = link;
      this.setState(SignalClientState.CONNECTED);
      this.connected.set();
      try {
        await this.keepAnnounced(link);
      } finally {
        this.connected.clear();
        if (this.link === link) this.link = null;
        link.close();
      }
      this.lastError = `${url}: connection lost`;
      this.urlIndex += 1; // fail over: try the next node first
    }
  }

  /**
   * Dial `url`, read its hello, announce.
   * @param {string} url
   */
  async open(url) {
    const ws = new WebSocket(url);
    const link = new Link(url, ws, (m) => this.enqueueSignal(m), this.log);
    try {
      await withTimeout(Promise.race([link.helloSeen.wait(), this.stopped.wait()]), this.config.connectTimeoutMs,
        () => new SignalClientError(`no hello from ${url} within ${this.config.connectTimeoutMs} ms`));
      if (link.hello === null) throw new LinkLost(`${url} closed before its hello`);
      this.readHello(link, link.hello);
      await this.announce(link);
    } catch (err) {
      link.close();
      throw err;
    }
    return link;
  }

  /**
   * @param {Link} link
   * @param {{[key: string]: unknown}} hello
   */
  readHello(link, hello) {
    if (hello.type !== 'hello') throw new MessageError('the node did not start with a hello message');
    if (hello.protocol !== PROTOCOL_VERSION) throw new MessageError(`node speaks protocol ${hello.protocol}, not ${PROTOCOL_VERSION}`);
    const { node_id: nodeId, nonce } = hello;
    if (typeof nodeId !== 'string' || typeof nonce !== 'string' || !(nonce.length > 0 && nonce.length <= 128)) {
      throw new MessageError('hello lacks a node_id or a nonce');
    }
    link.nodeId = nodeId;
    link.nonce = nonce;
    if (this.config.learnUrls && Array.isArray(hello.siblings)) {
      for (const sibling of hello.siblings.slice(0, 16)) {
        if (typeof sibling !== 'string' || !URL_RE.test(sibling) || this.urlList.includes(sibling)) continue;
        if (this.urlList.length >= this.config.maxUrls) break;
        this.urlList.push(sibling);
      }
    }
  }

  /**
   * Re-announce every `reannounceMs` until the connection drops or the client closes.
   * @param {Link} link
   */
  async keepAnnounced(link) {
    while (true) {
      await Promise.race([link.closed.wait(), this.stopped.wait(), this.sleep(this.config.reannounceMs)]);
      if (link.closed.isSet || this.stopped.isSet) return;
      try {
        await this.announce(link);
      } catch (err) {
        if (err instanceof RemoteSignalingError) this.log.warn(`re-announcing on ${link.url} failed: ${err.message}`);
        else return;
      }
    }
  }

  /**
   * A sleep that ends early when the client closes.
   * @param {number} ms
   */
  sleep(ms) {
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const done = new Promise((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    return Promise.race([done, this.stopped.wait()]).finally(() => clearTimeout(timer));
  }

  /**
   * Chain a received `signal` behind those still being verified; past `incomingQueue` it is dropped.
   * @param {{[key: string]: unknown}} message
   */
  enqueueSignal(message) {
    if (this.verifyingCount >= this.config.incomingQueue) {
      this.log.warn('too many signals waiting for verification: dropped one');
      return;
    }
    this.verifyingCount += 1;
    this.verifying = this.verifying
      .then(() => this.onSignal(message))
      .catch((err) => this.log.warn(`dropping a signal: ${err}`))
      .finally(() => {
        this.verifyingCount -= 1;
      });
  }

  /**
   * Verify a `signal` (fields, recipient, signature, freshness) and queue it for the reader.
   * @param {{[key: string]: unknown}} message
   */
  async onSignal(message) {
    const body = { from: message.from, to: message.to, ts_ms: message.ts_ms, payload: message.payload };
    try {
      if (typeof body.from !== 'string' || !PEER_ID_RE.test(body.from)) throw new MessageError('from is not a peer id');
      if (body.to !== this.peerId) throw new MessageError('signal is not for this peer');
      if (typeof body.ts_ms !== 'number' || !Number.isInteger(body.ts_ms)) throw new MessageError('ts_ms is not an integer');
      if (!isPlainObject(body.payload)) throw new MessageError('payload must be a JSON object');
      await verifyBody(body.from, SIGNAL_CONTEXT, body, message.sig);
      if (Math.abs(Date.now() - body.ts_ms) > MAX_SIGNAL_AGE_MS) throw new MessageError('signal timestamp is too far off: a replay?', { code: 'expired' });
    } catch (err) {
      if (!(err instanceof CoreError)) throw err;
      this.log.warn(`dropping a signal: ${err.message}`);
      return;
    }
    /** @type {IncomingSignal} */
    const signal = { sender: body.from, payload: body.payload, tsMs: body.ts_ms };
    this.config.onSignal?.(signal);
    const reader = this.readers.shift();
    if (reader) {
      reader(signal);
      return;
    }
    if (this.incoming.length >= this.config.incomingQueue) {
      this.incoming.shift();
      this.log.warn('incoming signal queue full: dropped the oldest');
    }
    this.incoming.push(signal);
  }
}

/**
 * Module-level forms of `Identity.importIdentity` and `identity.exportIdentity`, for a storage layer.
 * @param {ExportedIdentity} data
 */
export const importIdentity = (data) => Identity.importIdentity(data);
/**
 * @param {Identity} identity
 * @param {'jwk' | 'pkcs8'} [format]
 */
export const exportIdentity = (identity, format) => identity.exportIdentity(format);

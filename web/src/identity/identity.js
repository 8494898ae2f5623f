// @ts-check
/**
 * A node's identity in the browser: an Ed25519 key pair on WebCrypto (peer id = hex of the raw public
 * key), exported and imported as JWK or PKCS8 so storage can keep it, and the signatures made with it.
 * A signature always covers `signingBytes(context, body)`: a context string naming what is signed, a
 * newline, then the canonical JSON of the body (`python_peer/core/canonical.py`, docs/signaling.md).
 * The mirror of `python_peer/identity.py`; signaling, the ledger, storage and the span server use it.
 *
 * Errors::
 *
 *     AI4AllError > CoreError (web/src/protocol/errors.js)
 *     ├── CanonicalError        a value with no canonical JSON form
 *     └── IdentityError         key material that cannot be generated, imported or exported
 *         └── SignatureError    a signature that does not verify
 */

import { canonicalJson } from '../protocol/canonical.js';
import { MAX_DEPTH, MAX_SAFE_INT } from '../protocol/constants.js';
import { CoreError } from '../protocol/errors.js';
import { isPlainObject } from '../protocol/values.js';

/** A peer id: the 64 lowercase hex digits of an Ed25519 public key. */
export const PEER_ID_RE = /^[0-9a-f]{64}$/;
const SIGNATURE_RE = /^[0-9a-f]{128}$/;
const UTF8 = new TextEncoder();
const VERIFY_KEY_CACHE = 256;

/**
 * WebCrypto's type for bytes (lib.dom wants an ArrayBuffer-backed view; the bytes are read, not kept).
 * @param {Uint8Array} bytes
 */
const asBufferSource = (bytes) => /** @type {BufferSource} */ (bytes);

/** A value with no canonical JSON form (a float, NaN, an unsafe integer, too deep, not plain data). */
export class CanonicalError extends CoreError {}
/** Key material that cannot be generated, imported or exported. */
export class IdentityError extends CoreError {}
/** A signature that does not verify: forged, altered, or made by another key. */
export class SignatureError extends IdentityError {}

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
    if (err instanceof CoreError) {
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
export const fromHex = (text) => Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));

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
    return toHex(new Uint8Array(await crypto.subtle.sign({ name: 'Ed25519' }, this.privateKey, asBufferSource(bytes))));
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
  const ok = await crypto.subtle.verify({ name: 'Ed25519' }, key, fromHex(signature), asBufferSource(bytes));
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

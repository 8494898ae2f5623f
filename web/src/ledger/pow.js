// @ts-check
/**
 * The starter grant's proof of work in the browser, as Python's `pow_bits` and `mine_grant`: SHA-256
 * (`@noble/hashes`) from the constant prefix's midstate, mined in slices that yield to the event loop.
 */

import { sha256 } from '../../node_modules/@noble/hashes/sha2.js';
import { LedgerError } from './errors.js';
import { GRANT_POW_CONTEXT } from '../protocol/constants.js';

const UTF8 = new TextEncoder();


/**
 * Leading zero bits of a digest.
 * @param {Uint8Array} digest
 */
function leadingZeroBits(digest) {
  let bits = 0;
  for (let i = 0; i < digest.length; i++) {
    const z = Math.clz32(digest[i]) - 24;
    bits += z;
    if (z < 8) break;
  }
  return bits;
}

/**
 * SHA-256 (`@noble/hashes`) of the grant's proof-of-work bytes for consecutive nonces. The constant
 * prefix is hashed once (the midstate); each nonce clones the midstate into one reused hasher and adds
 * the nonce's digits and the closing brace, kept as bytes and incremented in place.
 */
class PowHasher {
  /** @param {Uint8Array} prefix */
  constructor(prefix) {
    this.mid = sha256.create().update(prefix);
    this.hasher = sha256.create();
    this.tail = new Uint8Array(0);
    this.digest = new Uint8Array(sha256.outputLen);
    this.digits = 0;
  }

  /**
   * Lay out the tail for `nonce`; later nonces of as many digits follow with `next`.
   * @param {number} nonce
   */
  seek(nonce) {
    this.tail = UTF8.encode(`${nonce}}`);
    this.digits = this.tail.length - 1;
  }

  /** The next nonce's digits, when it has as many digits (the caller checks). */
  next() {
    const { tail } = this;
    let i = this.digits - 1;
    while (tail[i] === 0x39) tail[i--] = 0x30;
    tail[i] += 1;
  }

  /** Leading zero bits of the current nonce's digest. */
  zeroBits() {
    this.mid._cloneInto(this.hasher).update(this.tail).digestInto(this.digest);
    return leadingZeroBits(this.digest);
  }
}

/** @param {string} author */
function powPrefix(author) {
  if (!/^[0-9a-f]{64}$/.test(author)) throw new LedgerError('a grant author is a peer id (64 lowercase hex digits)');
  return UTF8.encode(`${GRANT_POW_CONTEXT}\n{"author":"${author}","nonce":`);
}

/**
 * Leading zero bits of the grant proof of work of `author` with `nonce`: Python's `pow_bits`.
 * @param {string} author
 * @param {number} nonce
 */
export function powBits(author, nonce) {
  if (!Number.isSafeInteger(nonce) || nonce < 0) throw new LedgerError(`grant nonce ${nonce} is not a safe non-negative integer`);
  const hasher = new PowHasher(powPrefix(author));
  hasher.seek(nonce);
  return hasher.zeroBits();
}

/**
 * The first nonce from `start` whose proof of work has `bits` leading zero bits, or null past `limit`
 * nonces: Python's `mine_grant`. Synchronous: call it in slices (see `mineGrant`).
 * @param {string} author
 * @param {number} bits
 * @param {number} [start]
 * @param {number} [limit]
 * @returns {number | null}
 */
export function mineGrantSlice(author, bits, start = 0, limit = 2 ** 20) {
  const hasher = new PowHasher(powPrefix(author));
  const end = Math.min(start + limit, Number.MAX_SAFE_INTEGER);
  let nonce = start;
  while (nonce < end) {
    hasher.seek(nonce);
    const stop = Math.min(end, 10 ** hasher.digits); // the first nonce with one digit more
    for (;;) {
      if (hasher.zeroBits() >= bits) return nonce;
      if (++nonce >= stop) break;
      hasher.next();
    }
  }
  return null;
}

/**
 * Mine the grant's nonce in slices of `slice` nonces, yielding to the event loop between slices so a
 * page stays responsive (a Worker may pass a large slice).
 * @param {string} author
 * @param {number} bits
 * @param {{slice?: number, signal?: AbortSignal}} [options]
 * @returns {Promise<number>}
 */
export async function mineGrant(author, bits, { slice = 50_000, signal } = {}) {
  for (let start = 0; start < Number.MAX_SAFE_INTEGER; start += slice) {
    signal?.throwIfAborted();
    const nonce = mineGrantSlice(author, bits, start, slice);
    if (nonce !== null) return nonce;
    await new Promise((resolve) => setTimeout(resolve, 0));
  }
  throw new LedgerError('no proof of work found for the starter grant', { code: 'bad_pow' });
}

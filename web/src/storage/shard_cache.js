// @ts-check
/**
 * The shard cache in IndexedDB (stores `shard_meta` and `shard_bytes` of the `ai4all` database, made by
 * `openDatabase` in ./db.js): verified shards kept by sha256, so a second visit loads its span without
 * downloading it again.
 *
 * Chromium refuses a single IndexedDB value over ~127 MiB ("The serialized keys and/or value are too
 * large", which aborts the transaction), and a shard of a real model's span is often bigger. So a shard
 * over `SHARD_PIECE_BYTES` is stored in pieces under the keys `[sha256, 0]`, `[sha256, 1]`, ... of
 * `shard_bytes`, its metadata saying how many (`{sha256, size, pieces, meta, storedMs}` in
 * `shard_meta`); a smaller one is stored whole under the key `sha256`, its metadata without `pieces`
 * (the layout every entry had before). Metadata and bytes are written in one transaction. Each piece
 * is its own copy (`slice`, never `subarray`: a structured clone of a view copies its whole buffer).
 *
 * A cached shard is re-hashed before use (`fetchShardCached`): a corrupt entry is deleted and the shard
 * downloaded again; a cache that cannot be written is a warning, since serving works without it.
 */

import { fetchShard, sha256Hex } from '../runtime/download.js';
import { done, inTransaction } from './idb.js';

/** Bytes per stored piece of a shard: well below Chromium's ~127 MiB limit on one IndexedDB value. */
export const SHARD_PIECE_BYTES = 16 * 1024 * 1024;

/**
 * `pieces` is absent when the bytes are stored whole, under the key `sha256`.
 * @typedef {{sha256: string, size: number, pieces?: number, meta: Record<string, any>, storedMs: number}} ShardInfo
 */

/**
 * The keys of every piece of `sha256` (and of nothing else).
 * @param {string} sha256
 */
const piecesOf = (sha256) => IDBKeyRange.bound([sha256, 0], [sha256, Number.MAX_SAFE_INTEGER]);

/** Shards kept by sha256: bytes and metadata in separate stores, so `list` never reads bytes. */
export class ShardCache {
  /**
   * @param {IDBDatabase} db
   * @param {{pieceBytes?: number}} [options]  `pieceBytes`: the size of a stored piece (tests)
   */
  constructor(db, { pieceBytes = SHARD_PIECE_BYTES } = {}) {
    if (!Number.isSafeInteger(pieceBytes) || pieceBytes < 1) throw new RangeError(`pieceBytes must be a positive integer, not ${pieceBytes}`);
    this.db = db;
    this.pieceBytes = pieceBytes;
  }

  /**
   * The cached bytes of `sha256` and their metadata, or null when it is not cached. The bytes are as
   * stored: the caller checks their size and sha256 (`fetchShardCached` does).
   * @param {string} sha256
   * @returns {Promise<{bytes: Uint8Array, info: ShardInfo} | null>}
   */
  get(sha256) {
    return inTransaction(this.db, ['shard_meta', 'shard_bytes'], 'readonly', `cannot read cached shard ${sha256.slice(0, 12)}`, async (tx) => {
      /** @type {ShardInfo | undefined} */
      const info = await done(tx.objectStore('shard_meta').get(sha256));
      if (info === undefined) return null;
      const store = tx.objectStore('shard_bytes');
      if (info.pieces === undefined) {
        const whole = await done(store.get(sha256));
        if (whole === undefined) return null;
        return { bytes: whole instanceof Uint8Array ? whole : new Uint8Array(whole), info };
      }
      // A piece missing or of the wrong size gives empty bytes: the caller's size check finds it corrupt.
      const broken = { bytes: new Uint8Array(0), info };
      if (!Number.isSafeInteger(info.size) || info.size < 0 || !Number.isSafeInteger(info.pieces) || info.pieces < 0) return broken;
      // One request per piece, copied into place as it arrives, so the pieces are not all held twice.
      const bytes = new Uint8Array(info.size);
      let offset = 0;
      for (let i = 0; i < info.pieces; i++) {
        const piece = await done(store.get([sha256, i]));
        if (piece === undefined) return broken;
        const view = piece instanceof Uint8Array ? piece : new Uint8Array(piece);
        if (offset + view.byteLength > bytes.byteLength) return broken;
        bytes.set(view, offset);
        offset += view.byteLength;
      }
      return offset === info.size ? { bytes, info } : broken;
    });
  }

  /**
   * Store a shard: its metadata and its bytes (whole, or every piece) in one transaction: all of it, or
   * nothing. Throws
   * StorageError, code `quota` when the disk is full.
   * @param {string} sha256
   * @param {Uint8Array} bytes
   * @param {Record<string, any>} [meta] e.g. {model, file, start, end}
   */
  async put(sha256, bytes, meta = {}) {
    const whole = bytes.byteLength <= this.pieceBytes;
    const pieces = Math.ceil(bytes.byteLength / this.pieceBytes);
    /** @type {ShardInfo} */
    const info = whole
      ? { sha256, size: bytes.byteLength, meta, storedMs: Date.now() }
      : { sha256, size: bytes.byteLength, pieces, meta, storedMs: Date.now() };
    await inTransaction(this.db, ['shard_meta', 'shard_bytes'], 'readwrite', `cannot cache shard ${sha256.slice(0, 12)}`, (tx) => {
      const store = tx.objectStore('shard_bytes');
      /** @type {Promise<unknown>[]} */
      const pending = [done(store.delete(sha256)), done(store.delete(piecesOf(sha256)))];
      if (whole) {
        pending.push(done(store.put(bytes, sha256)));
      } else {
        for (let i = 0; i < pieces; i++) {
          // put() clones its value at once: each piece's copy can go as soon as it is queued
          pending.push(done(store.put(bytes.slice(i * this.pieceBytes, (i + 1) * this.pieceBytes), [sha256, i])));
        }
      }
      pending.push(done(tx.objectStore('shard_meta').put(info)));
      return Promise.all(pending);
    });
  }

  /**
   * Bytes `[offset, offset + length)` of the cached `sha256`, reading only the pieces they lie in
   * (a seeder's chunk: web/src/node/seeder.js checks it against its signed hash). Throws when it is
   * not cached or the range is past its end.
   * @param {string} sha256
   * @param {number} offset
   * @param {number} length
   * @returns {Promise<Uint8Array>}
   */
  readRange(sha256, offset, length) {
    return inTransaction(this.db, ['shard_meta', 'shard_bytes'], 'readonly', `cannot read cached shard ${sha256.slice(0, 12)}`, async (tx) => {
      /** @type {ShardInfo | undefined} */
      const info = await done(tx.objectStore('shard_meta').get(sha256));
      if (info === undefined) throw new Error(`shard ${sha256.slice(0, 12)}… is not cached`);
      if (offset < 0 || length < 0 || offset + length > info.size) throw new Error(`bytes ${offset}+${length} are past the ${info.size} of shard ${sha256.slice(0, 12)}…`);
      const store = tx.objectStore('shard_bytes');
      /** @param {unknown} value */
      const view = (value) => (value instanceof Uint8Array ? value : new Uint8Array(/** @type {ArrayBuffer} */ (value)));
      if (info.pieces === undefined) {
        const whole = await done(store.get(sha256));
        if (whole === undefined) throw new Error(`shard ${sha256.slice(0, 12)}…: bytes missing`);
        return view(whole).slice(offset, offset + length);
      }
      const out = new Uint8Array(length);
      let at = 0;
      for (let i = Math.floor(offset / this.pieceBytes); at < length; i++) {
        const piece = await done(store.get([sha256, i]));
        if (piece === undefined) throw new Error(`shard ${sha256.slice(0, 12)}…: piece ${i} missing`);
        const start = offset + at - i * this.pieceBytes;
        const part = view(piece).subarray(start, start + (length - at));
        if (part.byteLength === 0) throw new Error(`shard ${sha256.slice(0, 12)}…: piece ${i} is short`);
        out.set(part, at);
        at += part.byteLength;
      }
      return out;
    });
  }

  /** @param {string} sha256 */
  async delete(sha256) {
    await inTransaction(this.db, ['shard_meta', 'shard_bytes'], 'readwrite', `cannot delete cached shard ${sha256.slice(0, 12)}`, (tx) =>
      Promise.all([
        done(tx.objectStore('shard_meta').delete(sha256)),
        done(tx.objectStore('shard_bytes').delete(sha256)),
        done(tx.objectStore('shard_bytes').delete(piecesOf(sha256))),
      ]),
    );
  }

  /** @returns {Promise<ShardInfo[]>} every cached shard's metadata (no bytes) */
  list() {
    return inTransaction(this.db, ['shard_meta'], 'readonly', 'cannot list cached shards', (tx) =>
      done(tx.objectStore('shard_meta').getAll()),
    );
  }
}

/**
 * `fetchShard` through the cache: a cached copy whose size and sha256 still match is returned without
 * a request; a corrupt one is deleted and the shard downloaded again; a downloaded shard is cached
 * when there is room (a full disk is a warning: the bytes are still returned).
 * @param {IDBDatabase} db
 * @param {string | URL} url
 * @param {string} sha256 from the manifest
 * @param {number} bytes the size, from the manifest
 * @param {import('../runtime/download.js').ProgressCallback} [onProgress]
 * @param {{meta?: Record<string, any>, log?: Pick<Console, 'warn'>}} [options]
 * @returns {Promise<Uint8Array>}
 */
export async function fetchShardCached(db, url, sha256, bytes, onProgress, { meta = {}, log = console } = {}) {
  const cache = new ShardCache(db);
  /** @type {{bytes: Uint8Array, info: ShardInfo} | null} */
  let hit = null;
  try {
    hit = await cache.get(sha256);
  } catch (error) {
    log.warn(`shard cache unreadable, downloading: ${error instanceof Error ? error.message : error}`);
  }
  if (hit !== null) {
    if (hit.bytes.byteLength === bytes && (await sha256Hex(hit.bytes)) === sha256) {
      onProgress?.(bytes, bytes);
      return hit.bytes;
    }
    log.warn(`cached shard ${sha256.slice(0, 12)}… is corrupt (size or sha256 differ): downloading it again`);
    await cache.delete(sha256).catch((error) => log.warn(`cannot delete the corrupt shard: ${error.message}`));
  }
  const fresh = await fetchShard(url, sha256, bytes, onProgress);
  try {
    await cache.put(sha256, fresh, { url: String(url), ...meta });
  } catch (error) {
    log.warn(`shard ${sha256.slice(0, 12)}… not cached: ${error instanceof Error ? error.message : error}`);
  }
  return fresh;
}

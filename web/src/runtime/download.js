// @ts-check
/**
 * A shard's verified download: `fetchShard` streams the file, reports progress, and checks its size
 * and sha256 (`crypto.subtle`) against the manifest before a byte reaches onnxruntime. The IndexedDB
 * cache in front of it is `fetchShardCached` (web/src/storage/shard_cache.js). No DOM.
 */

import { ShardError } from './onnx.js';

/** @typedef {(received: number, total: number) => void} ProgressCallback */

/**
 * The lowercase hex sha256 of some bytes.
 * @param {Uint8Array} bytes
 * @returns {Promise<string>}
 */
export async function sha256Hex(bytes) {
  // crypto.subtle takes no view of a SharedArrayBuffer; shard bytes never live in one
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', /** @type {Uint8Array<ArrayBuffer>} */ (bytes)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * Download a shard and check its size and sha256 against the manifest; only then are its bytes returned.
 * @param {string | URL} url
 * @param {string} sha256 64 lowercase hex digits, from the manifest
 * @param {number} bytes the file size, from the manifest
 * @param {ProgressCallback} [onProgress] called with (received, total) as chunks arrive
 * @returns {Promise<Uint8Array>}
 */
export async function fetchShard(url, sha256, bytes, onProgress) {
  const file = fileName(url);
  if (!/^[0-9a-f]{64}$/.test(sha256)) throw new ShardError(`shard ${file}: sha256 ${sha256} is not 64 hex digits`);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new ShardError(`shard ${file}: size ${bytes} is not valid`);
  /** @type {Response} */
  let response;
  try {
    response = await fetch(url, { cache: 'no-store' });
  } catch (error) {
    throw new ShardError(`cannot download shard ${file}: ${error instanceof Error ? error.message : error}`, {
      cause: error,
    });
  }
  if (!response.ok) throw new ShardError(`cannot download shard ${file}: HTTP ${response.status}`);
  const buffer = new Uint8Array(bytes);
  let received = 0;
  const tooBig = () =>
    new ShardError(`shard ${file} is larger than the ${bytes} bytes the manifest says: the file was altered`);
  if (response.body) {
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (received + value.byteLength > bytes) {
        await reader.cancel();
        throw tooBig();
      }
      buffer.set(value, received);
      received += value.byteLength;
      onProgress?.(received, bytes);
    }
  } else {
    const all = new Uint8Array(await response.arrayBuffer());
    if (all.byteLength > bytes) throw tooBig();
    buffer.set(all);
    received = all.byteLength;
    onProgress?.(received, bytes);
  }
  if (received !== bytes) {
    throw new ShardError(`shard ${file} is ${received} bytes, the manifest says ${bytes}: the file was altered`);
  }
  const actual = await sha256Hex(buffer);
  if (actual !== sha256) {
    throw new ShardError(
      `shard ${file} has sha256 ${actual.slice(0, 16)}..., the manifest says ${sha256.slice(0, 16)}...: ` +
        'the file was altered or corrupted',
    );
  }
  return buffer;
}

/**
 * @param {string | URL} url
 * @returns {string}
 */
function fileName(url) {
  const path = new URL(String(url), globalThis.location?.href ?? 'http://localhost/').pathname;
  return decodeURIComponent(path.slice(path.lastIndexOf('/') + 1)) || String(url);
}

/**
 * The folder of `manifest.json` as a URL ending in `/`, so shard files resolve inside it.
 * @param {string | URL} baseUrl
 * @returns {URL}
 */
export function folderUrl(baseUrl) {
  const url = new URL(String(baseUrl), globalThis.location?.href ?? 'http://localhost/');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

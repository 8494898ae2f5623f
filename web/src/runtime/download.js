// @ts-check
/**
 * A shard's verified download: `fetchShard` streams one file, reports progress, and checks its size
 * and sha256 (`crypto.subtle`) against the manifest before a byte reaches onnxruntime. A shard may
 * need two files (manifest format 2, `entry.files`): its `.onnx` and one external-data file
 * `<file>.data` holding its weights; `shardFiles` checks that list by the rules of
 * python_peer/core/manifest.py and `fetchShardFiles` fetches and verifies every file of it. The
 * IndexedDB cache in front of it is `fetchShardCached` (web/src/storage/shard_cache.js). No DOM.
 */

import { ShardError } from './onnx.js';

/** @typedef {(received: number, total: number) => void} ProgressCallback */
/** One file a shard needs, as the manifest lists it. @typedef {{file: string, sha256: string, bytes: number}} ShardFile */
/**
 * Fetches and verifies one listed file (`fetchShard`, or `fetchShardCached` through the cache).
 * @typedef {(url: URL, listed: ShardFile, onProgress?: ProgressCallback) => Promise<Uint8Array>} FetchFile
 */
/**
 * A shard's verified files: the `.onnx` bytes, and its external data as onnxruntime-web takes it.
 * @typedef {{model: Uint8Array, externalData: {path: string, data: Uint8Array}[]}} ShardBytes
 */

/** The suffix of a shard's one external-data file (`EXTERNAL_DATA_SUFFIX` of python_peer/core/manifest.py). */
export const EXTERNAL_DATA_SUFFIX = '.data';

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

/**
 * @param {unknown} name
 * @returns {name is string}
 */
function plainFileName(name) {
  return typeof name === 'string' && name.length > 0 && !/[/\\\0]/.test(name) && !name.startsWith('.');
}

/**
 * Every file a shard needs, checked as python_peer/core/manifest.py checks it: the `.onnx` first (the
 * entry's own file, sha256 and bytes), then at most `<file>.data`; plain names only, so no file can be
 * fetched from outside the model's folder. A manifest without `files` (format 1) is the `.onnx` alone.
 * @param {{file: string, sha256: string, bytes: number, files?: unknown}} entry
 * @returns {ShardFile[]}
 */
export function shardFiles(entry) {
  const own = { file: entry?.file, sha256: entry?.sha256, bytes: entry?.bytes };
  if (!plainFileName(own.file)) throw new ShardError(`shard file name ${JSON.stringify(own.file)} must be a plain file name inside the model directory`);
  const raw = entry.files;
  if (raw === undefined) return [own];
  if (!Array.isArray(raw) || raw.length === 0) throw new ShardError(`shard ${own.file}: 'files' must list every file the shard needs, its .onnx first`);
  const expected = own.file + EXTERNAL_DATA_SUFFIX;
  /** @type {ShardFile[]} */
  const files = raw.map((item) => {
    if (item === null || typeof item !== 'object') throw new ShardError(`shard ${own.file}: each entry of 'files' must be an object {file, sha256, bytes}`);
    const { file, sha256, bytes } = item;
    if (!plainFileName(file)) throw new ShardError(`shard ${own.file}: file name ${JSON.stringify(file)} must be a plain file name inside the model directory`);
    if (typeof sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(sha256)) throw new ShardError(`shard ${own.file}: file ${file}: sha256 ${JSON.stringify(sha256)} is not 64 lowercase hex digits`);
    if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new ShardError(`shard ${own.file}: file ${file}: bytes must be a positive integer`);
    return { file, sha256, bytes };
  });
  const first = files[0];
  if (first.file !== own.file || first.sha256 !== own.sha256 || first.bytes !== own.bytes) {
    throw new ShardError(`shard ${own.file}: the first of 'files' must be the shard's .onnx with the same sha256 and bytes`);
  }
  for (const extra of files.slice(1)) {
    if (extra.file !== expected) throw new ShardError(`shard ${own.file}: file ${extra.file} is not allowed: a shard's only other file is ${expected}`);
  }
  if (files.length > 2) throw new ShardError(`shard ${own.file}: ${expected} is listed ${files.length - 1} times`);
  return files;
}

/**
 * The size of every file of a shard: what is downloaded and held.
 * @param {{file: string, sha256: string, bytes: number, files?: unknown}} entry
 */
export function shardTotalBytes(entry) {
  return shardFiles(entry).reduce((sum, f) => sum + f.bytes, 0);
}

/**
 * Fetch and verify every file of a shard (`fetchFile` checks each one's size and sha256); progress
 * counts over all of them. Nothing is returned unless every file verified.
 * @param {string | URL} baseUrl the folder of `manifest.json`
 * @param {{file: string, sha256: string, bytes: number, files?: unknown}} entry
 * @param {{fetchFile?: FetchFile, onProgress?: ProgressCallback}} [options]
 * @returns {Promise<ShardBytes>}
 */
export async function fetchShardFiles(baseUrl, entry, { fetchFile, onProgress } = {}) {
  const files = shardFiles(entry);
  const folder = folderUrl(baseUrl);
  const total = files.reduce((sum, f) => sum + f.bytes, 0);
  const get = fetchFile ?? ((url, listed, progress) => fetchShard(url, listed.sha256, listed.bytes, progress));
  /** @type {Uint8Array[]} */
  const got = [];
  let done = 0;
  for (const listed of files) {
    const bytes = await get(new URL(listed.file, folder), listed, (received) => onProgress?.(done + received, total));
    if (bytes.byteLength !== listed.bytes) {
      throw new ShardError(`shard ${entry.file}: file ${listed.file} is ${bytes.byteLength} bytes, the manifest says ${listed.bytes}`);
    }
    got.push(bytes);
    done += listed.bytes;
  }
  return { model: got[0], externalData: files.slice(1).map((listed, i) => ({ path: listed.file, data: got[i + 1] })) };
}

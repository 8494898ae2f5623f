// @ts-check
/**
 * The browser node's configuration: the page configuration of docs/browser.md (checked), the model's
 * manifest (fetched and checked), and the node's error.
 */

import { WASM_MEMORY_BYTES, WASM_RUNTIME_BYTES } from '../protocol/constants.js';
import { TransportError, transportConfigFor } from '../transport/peer.js';
import { PublicationError, fetchVerifiedManifest } from '../runtime/publication.js';

export const MIB = 2 ** 20;
const SHARD_FILE_RE = /^[^/\\.][^/\\]{0,254}$/; // a plain file name in the model's folder, as manifest.py

/** The node cannot start or go on: no shard fits, a shard fails its check, a bad configuration. */
export class NodeError extends Error {
  /** @param {string} message @param {ErrorOptions} [options] */
  constructor(message, options) {
    super(message, options);
    this.name = 'NodeError';
  }
}

/**
 * The page configuration of docs/browser.md.
 * @typedef {object} PageConfig
 * @property {string} [node_id]
 * @property {string[]} signal
 * @property {{name: string, base: string, signed?: boolean}[]} models
 * @property {{pow_bits: number}} ledger
 * @property {string} python_core
 * @property {{servers: {urls: string[], username?: string, credential?: string}[], loopback_only: boolean}} [ice]
 * @property {{trusted: string[], allow_unsigned: boolean}} [publishers] the publishers whose signed manifests
 *   the page uses, and whether it takes unsigned local exports (absent: none, no)
 *   STUN/TURN servers and loopback confinement of the WebRTC links (absent: loopback only, no servers)
 */

/** @param {{model: {config: {num_layers: number}}}} manifest */
export const numLayers = (manifest) => manifest.model.config.num_layers;

/** @param {unknown} err */
const message = (err) => (err instanceof Error ? err.message : String(err));

/**
 * Fetch the manifest of a model of the page configuration, verify its signed manifest against the page's
 * trusted publishers (runtime/publication.js: the signature, the pinned bytes, every file's hash and
 * size; an unsigned export only where the page allows it), and check what the node reads of it.
 * @param {{name: string, base: string, signed?: boolean}} modelEntry
 * @param {import('../runtime/publication.js').TrustPolicy} policy
 * @returns {Promise<any>}
 */
export async function fetchManifest(modelEntry, policy) {
  let manifest;
  try {
    ({ manifest } = await fetchVerifiedManifest(folder(modelEntry.base), policy, modelEntry.signed !== false));
  } catch (err) {
    if (err instanceof PublicationError) throw new NodeError(`the model ${modelEntry.name} is refused: ${err.message}`, { cause: err });
    throw new NodeError(`cannot fetch the manifest of ${modelEntry.name}: ${message(err)}`, { cause: err });
  }
  return checkManifest(manifest, modelEntry.name, String(new URL('manifest.json', folder(modelEntry.base))));
}

/**
 * Check what the node reads of a verified manifest: its name, layer count and shard file names.
 * @param {any} manifest
 * @param {string} name  the model the page names
 * @param {string} where  where it came from, for the error
 * @returns {any}
 */
export function checkManifest(manifest, name, where) {
  const url = where;
  if (
    typeof manifest?.model?.name !== 'string' ||
    typeof manifest.model.config !== 'object' ||
    !(Number.isInteger(manifest.model.config?.num_layers) && manifest.model.config.num_layers > 0) ||
    !Array.isArray(manifest.shards)
  ) {
    throw new NodeError(`the manifest at ${url} lacks model.name, model.config.num_layers or shards`);
  }
  for (const shard of manifest.shards) {
    if (typeof shard?.file !== 'string' || !SHARD_FILE_RE.test(shard.file)) {
      throw new NodeError(`the manifest at ${url} names a shard file ${JSON.stringify(shard?.file)} outside its folder`);
    }
  }
  if (manifest.model.name !== name) {
    throw new NodeError(`the manifest at ${url} is for ${manifest.model.name}, not ${name}`);
  }
  return manifest;
}

/** @param {unknown} config */
export function checkConfig(config) {
  const c = /** @type {any} */ (config);
  if (c === null || typeof c !== 'object') throw new NodeError('the page configuration is not an object');
  if (!Array.isArray(c.signal) || !c.signal.length || !c.signal.every((/** @type {unknown} */ u) => typeof u === 'string')) {
    throw new NodeError('the page configuration lists no signaling URL (signal)');
  }
  if (
    !Array.isArray(c.models) ||
    !c.models.length ||
    !c.models.every((/** @type {any} */ m) => typeof m?.name === 'string' && typeof m?.base === 'string')
  ) {
    throw new NodeError('the page configuration lists no model ({name, base})');
  }
  if (!Number.isInteger(c.ledger?.pow_bits)) throw new NodeError('the page configuration has no ledger.pow_bits');
  if (typeof c.python_core !== 'string') throw new NodeError('the page configuration has no python_core URL');
  try {
    transportConfigFor(c);
  } catch (err) {
    if (err instanceof TransportError) throw new NodeError(err.message);
    throw err;
  }
}

/** @param {string} base */
export function folder(base) {
  const url = new URL(base, globalThis.location?.href ?? 'http://localhost/');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

/**
 * The memory budget a node can use on `backend`: the visitor's budget, bounded by what the backend holds.
 * WASM: one instance addresses at most WASM_MEMORY_BYTES (4 GiB), of which the runtime itself needs
 * WASM_RUNTIME_BYTES. WebGPU: weights and KV caches live in GPU buffers, beyond the WASM heap; bounded
 * by half the device's memory when the browser states it (`navigator.deviceMemory`, in GB).
 * @param {number} requestedBytes
 * @param {'wasm' | 'webgpu'} backend
 * @param {{deviceMemoryGb?: number}} [device]
 * @returns {{bytes: number, reason: string}}
 */
export function backendBudget(requestedBytes, backend, device = {}) {
  const gibText = (/** @type {number} */ n) => `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (backend === 'wasm') {
    const limit = WASM_MEMORY_BYTES - WASM_RUNTIME_BYTES;
    if (requestedBytes <= limit) return { bytes: requestedBytes, reason: `your budget (WASM holds up to ${gibText(limit)})` };
    return { bytes: limit, reason: `WASM's limit: 4 GiB of memory less ${gibText(WASM_RUNTIME_BYTES)} for the runtime` };
  }
  const gb = device.deviceMemoryGb;
  if (typeof gb === 'number' && Number.isFinite(gb) && gb > 0) {
    const limit = Math.floor((gb * 2 ** 30) / 2);
    if (requestedBytes > limit) return { bytes: limit, reason: `WebGPU on a device stating ${gb} GB of memory: half of it` };
  }
  return { bytes: requestedBytes, reason: 'your budget (WebGPU keeps the weights beyond the 4 GiB WASM heap)' };
}

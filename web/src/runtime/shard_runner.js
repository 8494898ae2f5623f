// @ts-check
/**
 * One verified shard in one onnxruntime session (`ShardRunner`), the wire names of shard inputs and
 * outputs, and the manifest's types. Inputs are checked (names, dtypes, shapes, finite values) before
 * onnxruntime sees them, with messages that name the shard; onnxruntime itself is only reached through
 * `./onnx.js`. No DOM.
 *
 * Wire names (python_peer/core/manifest.py): `hidden_states`, `attention_mask` (past + new),
 * `position_ids`, `past_key_values.{i}.key/.value` in; `hidden_states_out`, `present.{i}.key/.value`
 * out; KV caches are `[batch, kv_heads, length, head_dim]`.
 */

import { admitShard } from './admission.js';
import { fetchShardFiles, shardFiles } from './download.js';
import { ShardError, ShardInputError, createSession, initRuntime, makeTensor, releaseSession, runSession } from './onnx.js';

export const HIDDEN_IN = 'hidden_states';
export const HIDDEN_OUT = 'hidden_states_out';
export const INPUT_IDS = 'input_ids';
export const ATTENTION_MASK = 'attention_mask';
export const POSITION_IDS = 'position_ids';
export const LOGITS = 'logits';

/** @param {number} layer */
export const pastKey = (layer) => `past_key_values.${layer}.key`;
/** @param {number} layer */
export const pastValue = (layer) => `past_key_values.${layer}.value`;
/** @param {number} layer */
export const presentKey = (layer) => `present.${layer}.key`;
/** @param {number} layer */
export const presentValue = (layer) => `present.${layer}.value`;

/** @typedef {import('./onnx.js').OrtTensor} OrtTensor */
/** @typedef {import('./onnx.js').Runtime} Runtime */
/** @typedef {import('./onnx.js').RuntimeOptions} RuntimeOptions */
/** @typedef {import('./download.js').ProgressCallback} ProgressCallback */

/** @typedef {{name: string, dtype: string, shape: (number | string)[]}} TensorSpec */
/**
 * A shard entry of `manifest.json`; `files` (format 2) lists every file it needs, the `.onnx` first.
 * @typedef {{file: string, sha256: string, bytes: number, files?: import('./download.js').ShardFile[],
 *   kind: string, start: number, end: number, inputs: TensorSpec[], outputs: TensorSpec[]}} ShardEntry
 */
/** `manifest.json` as parsed JSON (the fields read here). @typedef {{model: {config: Record<string, any>}, shards: ShardEntry[]}} Manifest */
/** @typedef {{data: Float32Array, dims: number[]}} Float32Tensor */

/**
 * @typedef {object} LoadOptions
 * @property {ProgressCallback} [onProgress] download progress
 * @property {RuntimeOptions} [runtime] options of the first `initRuntime()` on this page
 * @property {import('./download.js').FetchFile} [fetchFile] fetches and verifies one file (default
 *   `fetchShard`; `fetchShardCached` goes through the IndexedDB cache)
 */

const TYPED_ARRAYS = /** @type {const} */ ({ float32: Float32Array, float16: Uint16Array, int64: BigInt64Array });

/** Runs one verified shard; checks input names, dtypes, shapes and finite values before onnxruntime does. */
export class ShardRunner {
  /**
   * @param {Runtime} runtime
   * @param {any} session an `ort.InferenceSession`
   * @param {ShardEntry} entry
   */
  constructor(runtime, session, entry) {
    this.runtime = runtime;
    this.session = session;
    this.entry = entry;
    /** @type {Map<string, TensorSpec>} */
    this.inputs = new Map(entry.inputs.map((spec) => [spec.name, spec]));
  }

  /**
   * Download, verify and load a shard of a model served at `baseUrl` (the folder of `manifest.json`).
   * @param {string | URL} baseUrl
   * @param {ShardEntry} entry
   * @param {LoadOptions} [options]
   * @returns {Promise<ShardRunner>}
   */
  static async load(baseUrl, entry, { onProgress, runtime, fetchFile } = {}) {
    const files = await fetchShardFiles(baseUrl, entry, { onProgress, fetchFile });
    return ShardRunner.fromBytes(files.model, entry, runtime, files.externalData);
  }

  /**
   * Load bytes that were already verified (by `fetchShardFiles`, or by a cache that checked the sha256):
   * the `.onnx` and, for a shard with external data, its `<file>.data` as `{path, data}`.
   * @param {Uint8Array} bytes
   * @param {ShardEntry} entry
   * @param {RuntimeOptions} [runtimeOptions]
   * @param {{path: string, data: Uint8Array}[]} [externalData]
   * @returns {Promise<ShardRunner>}
   */
  static async fromBytes(bytes, entry, runtimeOptions, externalData = []) {
    const listed = shardFiles(entry).slice(1).map((f) => f.file);
    const given = externalData.map((f) => f.path);
    if (JSON.stringify(given) !== JSON.stringify(listed)) {
      throw new ShardError(`shard ${entry.file} lists the files ${JSON.stringify(listed)} besides its .onnx, ${JSON.stringify(given)} were given`);
    }
    admitShard(bytes, entry); // admission: ONNX only, allow-listed operators, known versions
    const runtime = await initRuntime(runtimeOptions);
    const session = await createSession(runtime, bytes, entry.file, externalData);
    return new ShardRunner(runtime, session, entry);
  }

  /** The execution provider this shard runs on. */
  get backend() {
    return this.runtime.backend;
  }

  /**
   * An `ort.Tensor` of this runtime.
   * @param {'float32' | 'float16' | 'int64'} type
   * @param {Float32Array | Uint16Array | BigInt64Array} data
   * @param {readonly number[]} dims
   * @returns {OrtTensor}
   */
  tensor(type, data, dims) {
    return makeTensor(this.runtime, type, data, dims);
  }

  /**
   * Run the shard; inputs named in `trusted` (our own KV cache) skip the NaN/Inf scan.
   * @param {Record<string, OrtTensor>} feeds
   * @param {{trusted?: ReadonlySet<string>}} [options]
   * @returns {Promise<Record<string, OrtTensor>>}
   */
  async run(feeds, { trusted } = {}) {
    const file = this.entry.file;
    const given = Object.keys(feeds);
    const missing = [...this.inputs.keys()].filter((name) => !(name in feeds)).sort();
    const extra = given.filter((name) => !this.inputs.has(name)).sort();
    if (missing.length || extra.length) {
      throw new ShardInputError(
        `shard ${file}: missing inputs ${JSON.stringify(missing)}, unexpected inputs ${JSON.stringify(extra)}`,
      );
    }
    for (const name of given) {
      const value = feeds[name];
      const spec = /** @type {TensorSpec} */ (this.inputs.get(name));
      if (value.type !== spec.dtype) {
        throw new ShardInputError(`shard ${file}: input ${name} is ${value.type}, expected ${spec.dtype}`);
      }
      const dims = value.dims;
      if (dims.length !== spec.shape.length || spec.shape.some((d, i) => typeof d === 'number' && dims[i] !== d)) {
        throw new ShardInputError(
          `shard ${file}: input ${name} has shape ${JSON.stringify(dims)}, expected ${JSON.stringify(spec.shape)}`,
        );
      }
      if (value.type === 'float32' && !trusted?.has(name) && !allFinite(value.data)) {
        throw new ShardInputError(`shard ${file}: input ${name} holds NaN or Inf`);
      }
    }
    return runSession(this.session, feeds, file);
  }

  /** Free the onnxruntime session. */
  async release() {
    await releaseSession(this.session);
  }
}

// --- checks shared by the runners ---------------------------------------------------------------------

/**
 * @param {ArrayLike<number>} data
 * @returns {boolean}
 */
function allFinite(data) {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
  return true;
}

/**
 * A positive integer of the manifest's model config, or ShardError naming it.
 * @param {unknown} value
 * @param {string} name
 * @returns {number}
 */
export function positiveInt(value, name) {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ShardError(`manifest config ${name} must be a positive integer, not ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * What a value is, for messages: "int64 array of 6 values", "Array", "undefined".
 * @param {unknown} value
 * @returns {string}
 */
export function describe(value) {
  for (const [name, type] of Object.entries(TYPED_ARRAYS)) {
    if (value instanceof type) return `${name} array of ${value.length} values`;
  }
  return value === null || value === undefined ? String(value) : `${/** @type {object} */ (value).constructor?.name}`;
}

// @ts-check
/**
 * Shards in the browser: a verified download, one shard in one onnxruntime session (`ShardRunner`), and
 * the per-session KV caches of a blocks shard (`BlocksRunner`), mirroring `python_peer/runner.py`.
 *
 * `fetchShard` streams the file, reports progress, and checks its size and sha256 (`crypto.subtle`)
 * against the manifest before a byte reaches onnxruntime. Runners check input names, dtypes, shapes and
 * finite values before onnxruntime does, with messages that name the shard. onnxruntime itself is only
 * reached through `./onnx.js`. No DOM: this runs in a page or a Worker.
 *
 * Wire names (python_peer/core/manifest.py): `hidden_states`, `attention_mask` (past + new),
 * `position_ids`, `past_key_values.{i}.key/.value` in; `hidden_states_out`, `present.{i}.key/.value`
 * out; KV caches are `[batch, kv_heads, length, head_dim]`.
 */

import {
  SessionError,
  ShardError,
  ShardInputError,
  createSession,
  initRuntime,
  makeTensor,
  releaseSession,
  runSession,
  tensorData,
} from './onnx.js';

export { SessionError, ShardError, ShardInputError } from './onnx.js';

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

/** @typedef {{name: string, dtype: string, shape: (number | string)[]}} TensorSpec */
/**
 * A shard entry of `manifest.json`.
 * @typedef {{file: string, sha256: string, bytes: number, kind: string, start: number, end: number,
 *   inputs: TensorSpec[], outputs: TensorSpec[]}} ShardEntry
 */
/** `manifest.json` as parsed JSON (the fields read here). @typedef {{model: {config: Record<string, any>}, shards: ShardEntry[]}} Manifest */
/** @typedef {{data: Float32Array, dims: number[]}} Float32Tensor */
/** @typedef {(received: number, total: number) => void} ProgressCallback */

/**
 * @typedef {object} LoadOptions
 * @property {ProgressCallback} [onProgress] download progress
 * @property {RuntimeOptions} [runtime] options of the first `initRuntime()` on this page
 */

const TYPED_ARRAYS = /** @type {const} */ ({ float32: Float32Array, float16: Uint16Array, int64: BigInt64Array });

// --- download -----------------------------------------------------------------------------------------

/**
 * The lowercase hex sha256 of some bytes.
 * @param {Uint8Array} bytes
 * @returns {Promise<string>}
 */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
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

// --- one shard ----------------------------------------------------------------------------------------

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
  static async load(baseUrl, entry, { onProgress, runtime } = {}) {
    const url = new URL(entry.file, folderUrl(baseUrl));
    const bytes = await fetchShard(url, entry.sha256, entry.bytes, onProgress);
    return ShardRunner.fromBytes(bytes, entry, runtime);
  }

  /**
   * Load bytes that were already verified (by `fetchShard`, or by a cache that checked the sha256).
   * @param {Uint8Array} bytes
   * @param {ShardEntry} entry
   * @param {RuntimeOptions} [runtimeOptions]
   * @returns {Promise<ShardRunner>}
   */
  static async fromBytes(bytes, entry, runtimeOptions) {
    const runtime = await initRuntime(runtimeOptions);
    const session = await createSession(runtime, bytes, entry.file);
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

// --- a blocks shard with per-session KV caches --------------------------------------------------------

/**
 * The KV cache and attention mask of one inference session on one blocks shard.
 * @typedef {object} KVSession
 * @property {number} batch
 * @property {BigInt64Array} mask [batch, length]: every token seen so far, 1 = real, 0 = padding
 * @property {number} length tokens seen so far
 * @property {Map<string, OrtTensor>} cache past key/value tensors by input name
 * @property {boolean} busy a forward step is running
 * @property {number} lastUsed `performance.now()` of the last step
 */

/** A blocks shard with per-session KV caches: each `forward` extends its session by the new tokens. */
export class BlocksRunner {
  /**
   * @param {ShardRunner} runner
   * @param {Manifest} manifest
   */
  constructor(runner, manifest) {
    const entry = runner.entry;
    if (entry.kind !== 'blocks') throw new ShardError(`shard ${entry.file} is an ${entry.kind} shard, not a blocks shard`);
    this.runner = runner;
    this.start = entry.start;
    this.end = entry.end;
    const config = manifest?.model?.config;
    if (!config || typeof config !== 'object') throw new ShardError("the manifest has no 'model.config' object");
    this.hiddenSize = positiveInt(config.hidden_size, 'hidden_size');
    this.kvHeads = positiveInt(config.num_key_value_heads, 'num_key_value_heads');
    this.headDim = positiveInt(config.head_dim, 'head_dim');
    /** @type {Map<string, KVSession>} */
    this.sessions = new Map();
    /** @type {number[]} */
    this.layers = [];
    for (let layer = entry.start; layer < entry.end; layer++) this.layers.push(layer);
    /** @type {ReadonlySet<string>} */
    this.cacheNames = new Set(this.layers.flatMap((layer) => [pastKey(layer), pastValue(layer)]));
  }

  /**
   * Download, verify and load a blocks shard of a model served at `baseUrl`.
   * @param {string | URL} baseUrl the folder of `manifest.json`
   * @param {ShardEntry} entry
   * @param {Manifest} manifest
   * @param {LoadOptions} [options]
   * @returns {Promise<BlocksRunner>}
   */
  static async load(baseUrl, entry, manifest, options) {
    if (entry.kind !== 'blocks') throw new ShardError(`shard ${entry.file} is an ${entry.kind} shard, not a blocks shard`);
    return new BlocksRunner(await ShardRunner.load(baseUrl, entry, options), manifest);
  }

  /** The span as Python writes it, e.g. "1-3". */
  get span() {
    return `${this.start}-${this.end}`;
  }

  /**
   * @param {string} sessionId
   * @param {number} batch
   */
  open(sessionId, batch) {
    if (this.sessions.has(sessionId)) throw new SessionError(`session ${sessionId} is already open on span ${this.span}`);
    if (!Number.isInteger(batch) || batch < 1) throw new ShardInputError(`batch must be a positive integer, not ${batch}`);
    this.sessions.set(sessionId, {
      batch,
      mask: new BigInt64Array(0),
      length: 0,
      cache: new Map(),
      busy: false,
      lastUsed: performance.now(),
    });
  }

  /** @param {string} sessionId */
  close(sessionId) {
    const state = this.sessions.get(sessionId);
    if (!state) return;
    this.sessions.delete(sessionId);
    if (!state.busy) disposeAll(state.cache);
  }

  /**
   * @param {string} sessionId
   * @returns {KVSession}
   */
  session(sessionId) {
    const state = this.sessions.get(sessionId);
    if (!state) throw new SessionError(`session ${sessionId} is not open on span ${this.span}`);
    return state;
  }

  /**
   * Run the new tokens of a session; `maskNew` and `positionIds` cover only the new tokens ([batch, seq]).
   * @param {string} sessionId
   * @param {Float32Tensor} hidden [batch, seq, hidden_size]
   * @param {BigInt64Array} maskNew [batch, seq] flattened, 1 = real token, 0 = padding
   * @param {BigInt64Array} positionIds [batch, seq] flattened
   * @returns {Promise<Float32Tensor>} hidden_states_out, [batch, seq, hidden_size]
   */
  async forward(sessionId, hidden, maskNew, positionIds) {
    const state = this.session(sessionId);
    const dims = Array.isArray(hidden?.dims) ? hidden.dims : [];
    if (
      !(hidden?.data instanceof Float32Array) ||
      dims.length !== 3 ||
      !dims.every((d) => Number.isInteger(d) && d >= 0) ||
      dims[0] !== state.batch ||
      dims[1] < 1 ||
      dims[2] !== this.hiddenSize ||
      hidden.data.length !== dims[0] * dims[1] * dims[2]
    ) {
      const shape = JSON.stringify(dims);
      const what = hidden?.data instanceof Float32Array ? `${hidden.data.length} float32 values` : 'not a Float32Array';
      throw new ShardInputError(
        `hidden states of shape ${shape} (${what}) do not fit session ${sessionId} ` +
          `(batch ${state.batch}, hidden ${this.hiddenSize})`,
      );
    }
    const [batch, seq] = dims;
    if (
      !(maskNew instanceof BigInt64Array) ||
      !(positionIds instanceof BigInt64Array) ||
      maskNew.length !== batch * seq ||
      positionIds.length !== batch * seq
    ) {
      throw new ShardInputError(
        `attention mask (${describe(maskNew)}) and position ids (${describe(positionIds)}) ` +
          `must both be BigInt64Array of [${batch}, ${seq}] = ${batch * seq} values`,
      );
    }
    if (maskNew.some((m) => m !== 0n && m !== 1n)) throw new ShardInputError('attention mask values must be 0 or 1');
    if (positionIds.some((p) => p < 0n)) throw new ShardInputError('position ids must not be negative');
    if (state.busy) throw new SessionError(`session ${sessionId} on span ${this.span} is already running a step`);

    const past = state.length;
    const total = past + seq;
    const fullMask = new BigInt64Array(batch * total);
    for (let b = 0; b < batch; b++) {
      fullMask.set(state.mask.subarray(b * past, (b + 1) * past), b * total);
      fullMask.set(maskNew.subarray(b * seq, (b + 1) * seq), b * total + past);
    }
    const runner = this.runner;
    /** @type {Record<string, OrtTensor>} */
    const feeds = {
      [HIDDEN_IN]: runner.tensor('float32', hidden.data, dims),
      [ATTENTION_MASK]: runner.tensor('int64', fullMask, [batch, total]),
      [POSITION_IDS]: runner.tensor('int64', positionIds, [batch, seq]),
    };
    /** @type {OrtTensor[]} */
    const empties = [];
    for (const name of this.cacheNames) {
      let cached = state.cache.get(name);
      if (!cached) {
        cached = runner.tensor('float32', new Float32Array(0), [batch, this.kvHeads, 0, this.headDim]);
        empties.push(cached);
      }
      feeds[name] = cached;
    }
    state.busy = true;
    /** @type {Record<string, OrtTensor>} */
    let outputs;
    try {
      outputs = await runner.run(feeds, { trusted: this.cacheNames });
    } finally {
      state.busy = false;
      for (const tensor of empties) tensor.dispose();
    }
    const out = outputs[HIDDEN_OUT];
    const data = /** @type {Float32Array} */ (await tensorData(out));
    const result = { data: data.slice(), dims: [...out.dims] };
    out.dispose();
    if (this.sessions.get(sessionId) !== state) {
      // closed while the step ran: drop what it produced
      disposeAll(state.cache);
      for (const name of Object.keys(outputs)) if (name !== HIDDEN_OUT) outputs[name].dispose();
      throw new SessionError(`session ${sessionId} was closed on span ${this.span} during a step`);
    }
    for (const layer of this.layers) {
      for (const [input, output] of [
        [pastKey(layer), presentKey(layer)],
        [pastValue(layer), presentValue(layer)],
      ]) {
        state.cache.get(input)?.dispose();
        state.cache.set(input, outputs[output]);
      }
    }
    state.mask = fullMask;
    state.length = total;
    state.lastUsed = performance.now();
    return result;
  }

  /** Close every session and free the onnxruntime session. */
  async release() {
    for (const id of [...this.sessions.keys()]) this.close(id);
    await this.runner.release();
  }
}

// --- the client's own shards: embed and head ---------------------------------------------------------

/**
 * @param {ShardEntry} entry
 * @param {string} kind
 */
function requireKind(entry, kind) {
  if (entry?.kind !== kind) throw new ShardError(`shard ${entry?.file} is an ${entry?.kind} shard, not an ${kind} shard`);
}

/**
 * The embedding shard: token ids (and position ids for models with learned positions) to hidden states.
 * It runs on the user's machine, so the prompt's ids never leave it.
 */
export class EmbedRunner {
  /**
   * @param {ShardRunner} runner
   * @param {Manifest} manifest
   */
  constructor(runner, manifest) {
    requireKind(runner.entry, 'embed');
    this.runner = runner;
    const config = manifest?.model?.config;
    if (!config || typeof config !== 'object') throw new ShardError("the manifest has no 'model.config' object");
    this.hiddenSize = positiveInt(config.hidden_size, 'hidden_size');
    this.vocabSize = positiveInt(config.vocab_size, 'vocab_size');
    /** whether the shard takes `position_ids` (models with learned position embeddings) */
    this.takesPositions = runner.inputs.has(POSITION_IDS);
  }

  /**
   * @param {string | URL} baseUrl the folder of `manifest.json`
   * @param {Manifest} manifest
   * @param {LoadOptions} [options]
   * @returns {Promise<EmbedRunner>}
   */
  static async load(baseUrl, manifest, options) {
    const entry = manifest.shards.find((s) => s.kind === 'embed');
    if (entry === undefined) throw new ShardError('the manifest lists no embed shard');
    return new EmbedRunner(await ShardRunner.load(baseUrl, entry, options), manifest);
  }

  /**
   * Hidden states of `ids` ([batch, seq] flattened); `positionIds` are used when the shard takes them.
   * @param {BigInt64Array} ids
   * @param {readonly number[]} dims [batch, seq]
   * @param {BigInt64Array} positionIds [batch, seq] flattened
   * @returns {Promise<Float32Tensor>} [batch, seq, hidden_size]
   */
  async run(ids, dims, positionIds) {
    if (!(ids instanceof BigInt64Array) || dims.length !== 2 || !dims.every((d) => Number.isInteger(d) && d >= 1) || ids.length !== dims[0] * dims[1]) {
      throw new ShardInputError(`token ids (${describe(ids)}) must be a BigInt64Array of shape [batch, seq], ${JSON.stringify(dims)} given`);
    }
    for (const id of ids) {
      if (id < 0n || id >= BigInt(this.vocabSize)) throw new ShardInputError(`token id ${id} is outside the vocabulary of ${this.vocabSize}`);
    }
    const runner = this.runner;
    /** @type {Record<string, OrtTensor>} */
    const feeds = { [INPUT_IDS]: runner.tensor('int64', ids, dims) };
    if (this.takesPositions) {
      if (!(positionIds instanceof BigInt64Array) || positionIds.length !== ids.length) {
        throw new ShardInputError(`position ids (${describe(positionIds)}) must match the ${ids.length} token ids`);
      }
      feeds[POSITION_IDS] = runner.tensor('int64', positionIds, dims);
    }
    return runToFloat32(runner, feeds, HIDDEN_OUT);
  }

  async release() {
    await this.runner.release();
  }
}

/** The head shard: hidden states to logits, on the user's machine (the logits never leave it). */
export class HeadRunner {
  /**
   * @param {ShardRunner} runner
   * @param {Manifest} manifest
   */
  constructor(runner, manifest) {
    requireKind(runner.entry, 'head');
    this.runner = runner;
    const config = manifest?.model?.config;
    if (!config || typeof config !== 'object') throw new ShardError("the manifest has no 'model.config' object");
    this.hiddenSize = positiveInt(config.hidden_size, 'hidden_size');
    this.vocabSize = positiveInt(config.vocab_size, 'vocab_size');
  }

  /**
   * @param {string | URL} baseUrl the folder of `manifest.json`
   * @param {Manifest} manifest
   * @param {LoadOptions} [options]
   * @returns {Promise<HeadRunner>}
   */
  static async load(baseUrl, manifest, options) {
    const entry = manifest.shards.find((s) => s.kind === 'head');
    if (entry === undefined) throw new ShardError('the manifest lists no head shard');
    return new HeadRunner(await ShardRunner.load(baseUrl, entry, options), manifest);
  }

  /**
   * Logits of hidden states (checked finite by the runner: they came from other peers).
   * @param {Float32Tensor} hidden [batch, seq, hidden_size]
   * @returns {Promise<Float32Tensor>} [batch, seq, vocab]
   */
  async run(hidden) {
    const dims = Array.isArray(hidden?.dims) ? hidden.dims : [];
    if (
      !(hidden?.data instanceof Float32Array) ||
      dims.length !== 3 ||
      !dims.every((d) => Number.isInteger(d) && d >= 1) ||
      dims[2] !== this.hiddenSize ||
      hidden.data.length !== dims[0] * dims[1] * dims[2]
    ) {
      throw new ShardInputError(`hidden states of shape ${JSON.stringify(dims)} do not fit the head (hidden ${this.hiddenSize})`);
    }
    const runner = this.runner;
    return runToFloat32(runner, { [HIDDEN_IN]: runner.tensor('float32', hidden.data, dims) }, LOGITS);
  }

  async release() {
    await this.runner.release();
  }
}

/**
 * Run a shard and copy one float32 output out of onnxruntime; every output tensor is disposed.
 * @param {ShardRunner} runner
 * @param {Record<string, OrtTensor>} feeds
 * @param {string} name
 * @returns {Promise<Float32Tensor>}
 */
async function runToFloat32(runner, feeds, name) {
  const outputs = await runner.run(feeds);
  try {
    const out = outputs[name];
    if (out === undefined) throw new ShardError(`shard ${runner.entry.file} gave no ${name} output`);
    const data = /** @type {Float32Array} */ (await tensorData(out));
    return { data: data.slice(), dims: [...out.dims] };
  } finally {
    for (const tensor of Object.values(outputs)) tensor.dispose();
  }
}

// --- helpers ------------------------------------------------------------------------------------------

/**
 * @param {string | URL} baseUrl
 * @returns {URL}
 */
function folderUrl(baseUrl) {
  const url = new URL(String(baseUrl), globalThis.location?.href ?? 'http://localhost/');
  if (!url.pathname.endsWith('/')) url.pathname += '/';
  return url;
}

/**
 * @param {ArrayLike<number>} data
 * @returns {boolean}
 */
function allFinite(data) {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return false;
  return true;
}

/**
 * @param {unknown} value
 * @param {string} name
 * @returns {number}
 */
function positiveInt(value, name) {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new ShardError(`manifest config ${name} must be a positive integer, not ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * @param {unknown} value
 * @returns {string}
 */
function describe(value) {
  for (const [name, type] of Object.entries(TYPED_ARRAYS)) {
    if (value instanceof type) return `${name} array of ${value.length} values`;
  }
  return value === null || value === undefined ? String(value) : `${/** @type {object} */ (value).constructor?.name}`;
}

/** @param {Map<string, OrtTensor>} cache */
function disposeAll(cache) {
  for (const tensor of cache.values()) tensor.dispose();
  cache.clear();
}

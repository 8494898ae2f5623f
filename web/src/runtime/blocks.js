// @ts-check
/**
 * A blocks shard with per-session KV caches (`BlocksRunner`, mirroring `python_peer/runner.py`): each
 * `forward` extends its inference session by the new tokens, keeping the attention mask and the
 * present key/values of every layer for the next step. No DOM.
 */

import { SessionError, ShardError, ShardInputError, tensorData } from './onnx.js';
import {
  ATTENTION_MASK,
  HIDDEN_IN,
  HIDDEN_OUT,
  POSITION_IDS,
  ShardRunner,
  describe,
  pastKey,
  pastValue,
  positiveInt,
  presentKey,
  presentValue,
} from './shard_runner.js';

/** @typedef {import('./shard_runner.js').OrtTensor} OrtTensor */
/** @typedef {import('./shard_runner.js').Manifest} Manifest */
/** @typedef {import('./shard_runner.js').ShardEntry} ShardEntry */
/** @typedef {import('./shard_runner.js').LoadOptions} LoadOptions */
/** @typedef {import('./shard_runner.js').Float32Tensor} Float32Tensor */

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

/** @param {Map<string, OrtTensor>} cache */
function disposeAll(cache) {
  for (const tensor of cache.values()) tensor.dispose();
  cache.clear();
}

// @ts-check
/**
 * The client's own shards: `EmbedRunner` (token ids to hidden states) and `HeadRunner` (hidden states to
 * logits). They run on the user's machine, so the prompt's ids and the logits never leave it. No DOM.
 */

import { ShardError, ShardInputError, tensorData } from './onnx.js';
import { HIDDEN_IN, HIDDEN_OUT, INPUT_IDS, LOGITS, POSITION_IDS, ShardRunner, describe, positiveInt } from './shard_runner.js';

/** @typedef {import('./shard_runner.js').OrtTensor} OrtTensor */
/** @typedef {import('./shard_runner.js').Manifest} Manifest */
/** @typedef {import('./shard_runner.js').ShardEntry} ShardEntry */
/** @typedef {import('./shard_runner.js').LoadOptions} LoadOptions */
/** @typedef {import('./shard_runner.js').Float32Tensor} Float32Tensor */

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

// @ts-check
/**
 * Sampling and the generation loop over the mesh, the mirror of `python_peer/generate.py`.
 *
 * Logits stay on this machine: the session returns them from the locally held head shard and sampling
 * happens here. Greedy decoding (`temperature` 0) picks the first highest logit, as `np.argmax`, so
 * greedy tokens equal Python's. Sampled decoding follows Python's arithmetic (float64 softmax of
 * logits / temperature, nucleus cut by `top_p` over a stable descending sort) but draws from its own
 * generator (xoshiro128** seeded by `seed`, else from `crypto.getRandomValues`): the same seed gives
 * the same tokens here, not the tokens numpy would draw.
 */

import { AI4AllError } from '../protocol/wire.js';
import { StreamDecoder } from '../runtime/tokenizer.js';

/** Below this, dividing the logits by the temperature overflows: it is greedy. */
export const MIN_TEMPERATURE = 1e-6;

/** Sampling parameters out of range, or an empty prompt. */
export class GenerationError extends AI4AllError {}

/**
 * @typedef {object} SamplingParams
 * @property {number} maxTokens  at least 1
 * @property {number} temperature  0..10, 0 is greedy
 * @property {number} topP  (0, 1]
 * @property {number | null} seed  a u32 makes sampling reproducible
 * @property {string[]} stop  stop strings: generation ends before them
 */

/**
 * Check and complete sampling parameters (Python's `SamplingParams.__post_init__`).
 * @param {Partial<SamplingParams>} [params]
 * @returns {Readonly<SamplingParams>}
 */
export function samplingParams({ maxTokens = 128, temperature = 0, topP = 1, seed = null, stop = [] } = {}) {
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new GenerationError(`max_tokens must be at least 1, not ${maxTokens}`);
  if (typeof temperature !== 'number' || !(temperature >= 0 && temperature <= 10)) {
    throw new GenerationError(`temperature must be within 0..10, not ${temperature}`);
  }
  if (typeof topP !== 'number' || !(topP > 0 && topP <= 1)) throw new GenerationError(`top_p must be within (0, 1], not ${topP}`);
  if (seed !== null && !(Number.isInteger(seed) && seed >= 0 && seed < 2 ** 32)) {
    throw new GenerationError(`seed must be an integer in 0..2**32-1, not ${seed}`);
  }
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string' && s.length > 0)) {
    throw new GenerationError('stop must be a list of non-empty strings');
  }
  return Object.freeze({ maxTokens, temperature, topP, seed, stop: [...stop] });
}

/**
 * xoshiro128** : a small seeded generator of uniform floats in [0, 1).
 * @param {number | null} seed
 * @returns {() => number}
 */
export function makeRng(seed) {
  const state = new Uint32Array(4);
  if (seed === null) {
    crypto.getRandomValues(state);
  } else {
    // splitmix32 spreads the seed over the state
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      state[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  if (state.every((v) => v === 0)) state[0] = 1;
  const rotl = (/** @type {number} */ v, /** @type {number} */ k) => ((v << k) | (v >>> (32 - k))) >>> 0;
  return () => {
    const result = Math.imul(rotl(Math.imul(state[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (state[1] << 9) >>> 0;
    state[2] ^= state[0];
    state[3] ^= state[1];
    state[1] ^= state[2];
    state[0] ^= state[3];
    state[2] ^= t;
    state[3] = rotl(state[3], 11);
    return result / 2 ** 32;
  };
}

/**
 * The index of the first highest value (`np.argmax`).
 * @param {ArrayLike<number>} values
 */
export function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * One token from a `[vocab]` logit vector (Python's `sample`).
 * @param {ArrayLike<number>} logits
 * @param {Readonly<SamplingParams>} params
 * @param {() => number} rng
 */
export function sample(logits, params, rng) {
  if (params.temperature < MIN_TEMPERATURE) return argmax(logits);
  const n = logits.length;
  const probs = new Float64Array(n);
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    probs[i] = logits[i] / params.temperature;
    if (probs[i] > max) max = probs[i];
  }
  let sum = 0;
  for (let i = 0; i < n; i++) {
    probs[i] = Math.exp(probs[i] - max);
    sum += probs[i];
  }
  for (let i = 0; i < n; i++) probs[i] /= sum;
  /** @type {ArrayLike<number>} */
  let chosen = probs;
  /** @type {number[] | null} */
  let order = null;
  if (params.topP < 1) {
    order = Array.from({ length: n }, (_, i) => i).sort((a, b) => probs[b] - probs[a] || a - b);
    let cumulative = 0;
    let keep = n;
    for (let k = 0; k < n; k++) {
      cumulative += probs[order[k]];
      if (cumulative >= params.topP) {
        keep = k + 1;
        break;
      }
    }
    order = order.slice(0, keep);
    let kept = 0;
    for (const i of order) kept += probs[i];
    chosen = order.map((i) => probs[i] / kept);
  }
  const u = rng();
  let acc = 0;
  for (let k = 0; k < chosen.length; k++) {
    acc += chosen[k];
    if (u < acc) return order === null ? k : order[k];
  }
  // rounding left u above the last sum: the last token with any probability
  for (let k = chosen.length - 1; k >= 0; k--) if (chosen[k] > 0) return order === null ? k : order[k];
  return argmax(logits);
}

/**
 * The outcome of one generation.
 * @typedef {object} Generation
 * @property {string} text
 * @property {number[]} tokenIds  the sampled tokens, end-of-sequence excluded
 * @property {'stop' | 'length' | 'cancelled'} finishReason  stop: eos or a stop string; cancelled: the caller's signal
 * @property {number} promptTokens
 */

/** Turns sampled tokens into text pieces: stops at end-of-sequence tokens and stop strings. */
class Detokenizer {
  /**
   * @param {import('../runtime/tokenizer.js').ModelTokenizer} tokenizer
   * @param {Readonly<SamplingParams>} params
   * @param {Generation} result
   */
  constructor(tokenizer, params, result) {
    this.tokenizer = tokenizer;
    this.params = params;
    this.result = result;
    this.decoder = new StreamDecoder(tokenizer);
    this.held = '';
    this.holdback = Math.max(0, ...params.stop.map((s) => s.length - 1));
  }

  /**
   * The text that can be shown after `token`, and whether generation is over.
   * @param {number} token
   * @returns {[string, boolean]}
   */
  push(token) {
    if (this.tokenizer.eosTokenIds.has(token)) {
      this.result.finishReason = 'stop';
      return [this.flush(), true];
    }
    this.held += this.decoder.push(token);
    this.result.tokenIds = [...this.decoder.ids];
    const hits = this.params.stop.map((s) => this.held.indexOf(s)).filter((i) => i >= 0);
    if (hits.length) {
      this.held = this.held.slice(0, Math.min(...hits));
      this.result.finishReason = 'stop';
      return [this.flush(), true];
    }
    const safe = this.held.length - this.holdback;
    if (safe <= 0) return ['', false];
    const piece = this.held.slice(0, safe);
    this.held = this.held.slice(safe);
    this.result.text += piece;
    return [piece, false];
  }

  flush() {
    const piece = this.held;
    this.held = '';
    this.result.text += piece;
    return piece;
  }
}

/**
 * Something that opens sessions: `MeshClient`. `context`: the most positions its model takes (null or
 * absent: unknown), where a generation stops for "length" if `maxTokens` has not stopped it first.
 * @typedef {{context?: number | null, open(batch: number, maxLength: number): Promise<{step(ids: BigInt64Array, mask: BigInt64Array):
 *   Promise<{data: Float32Array, dims: number[]}>, close(): Promise<void>}>}} Pipeline
 */

/**
 * How many tokens to sample: `maxTokens`, or fewer where the model's context ends (the generation then
 * stops for "length", as at `maxTokens`). A prompt that fills the context is refused.
 * @param {number | null} context
 * @param {number} promptLength
 * @param {number} maxTokens
 */
export function tokenBudget(context, promptLength, maxTokens) {
  if (context === null) return maxTokens;
  const room = context - promptLength;
  if (room < 1) throw new GenerationError(`the prompt is ${promptLength} tokens; this model's context holds ${context}, leaving no room for a token`);
  return Math.min(maxTokens, room);
}

/**
 * Yield text pieces as they are generated; fill `result` with the whole outcome. `signal` (an
 * AbortSignal) stops after the current step; the session is closed in every case.
 * @param {Pipeline} pipeline
 * @param {import('../runtime/tokenizer.js').ModelTokenizer} tokenizer
 * @param {readonly number[]} promptIds
 * @param {Readonly<SamplingParams>} params
 * @param {{result?: Generation, signal?: AbortSignal, onToken?: (token: number) => void}} [options]
 * @returns {AsyncGenerator<string>}
 */
export async function* stream(pipeline, tokenizer, promptIds, params, { result, signal, onToken } = {}) {
  if (!promptIds.length) throw new GenerationError('the prompt is empty');
  const outcome = result ?? { text: '', tokenIds: [], finishReason: 'length', promptTokens: 0 };
  outcome.promptTokens = promptIds.length;
  const rng = makeRng(params.seed);
  const text = new Detokenizer(tokenizer, params, outcome);
  const tokens = tokenBudget(pipeline.context ?? null, promptIds.length, params.maxTokens);
  const session = await pipeline.open(1, promptIds.length + tokens);
  try {
    const ids = BigInt64Array.from(promptIds, (i) => BigInt(i));
    let logits = await session.step(ids, new BigInt64Array(ids.length).fill(1n));
    let piece = '';
    for (let i = 0; i < tokens; i++) {
      if (signal?.aborted) {
        outcome.finishReason = 'cancelled';
        break;
      }
      const token = sample(logits.data.subarray(0, logits.dims[2]), params, rng);
      onToken?.(token);
      let done;
      [piece, done] = text.push(token);
      if (piece) yield piece;
      if (done) return;
      if (i === tokens - 1) break; // the last token's own step would give logits no one samples
      logits = await session.step(BigInt64Array.of(BigInt(token)), BigInt64Array.of(1n));
    }
    piece = text.flush();
    if (piece) yield piece;
  } finally {
    await session.close();
  }
}

/**
 * The whole generation at once.
 * @param {Pipeline} pipeline
 * @param {import('../runtime/tokenizer.js').ModelTokenizer} tokenizer
 * @param {readonly number[]} promptIds
 * @param {Readonly<SamplingParams>} params
 * @param {{signal?: AbortSignal}} [options]
 * @returns {Promise<Generation>}
 */
export async function generate(pipeline, tokenizer, promptIds, params, { signal } = {}) {
  /** @type {Generation} */
  const result = { text: '', tokenIds: [], finishReason: 'length', promptTokens: 0 };
  for await (const _ of stream(pipeline, tokenizer, promptIds, params, { result, signal })) {
    // pieces are in result.text
  }
  return result;
}

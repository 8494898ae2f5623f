// @ts-check
/**
 * One hop of a generation through the mesh: one peer serving one span within a session, and the step
 * inputs sent to it (kept for replay to a replacement); the tensors of a FORWARD and its answer.
 */

import { FrameType, NO_FLAGS, TensorError, canonicalJson, checkFinite, floatTensor, frameTensor, tensorToFloat32 } from '../protocol/wire.js';
import { ANSWER_META_KEY, INPUT_CHAIN_START, answerSigningBytes, chainInput, tensorDigest } from '../protocol/answers.js';
import { verify } from '../identity/identity.js';
import { BadAnswerError } from './errors.js';

export const HIDDEN_IN = 'hidden_states';
export const HIDDEN_OUT = 'hidden_states_out';
export const ATTENTION_MASK = 'attention_mask';
export const POSITION_IDS = 'position_ids';

/** @typedef {{data: Float32Array, dims: number[]}} Hidden */
/** @typedef {{hidden: Hidden, mask: BigInt64Array, positions: BigInt64Array}} StepInputs */
/**
 * A server's signed commitment to one step (docs/wire.md), as evidence carries it.
 * @typedef {{body: {session: string, model: string, start: number, end: number, step: number, tokens: number,
 *   input: string, output: string, client: string, server: string}, signature: string}} SignedAnswer
 */
/**
 * What a hop needs of its client: `MeshClient`. With `config.verifyAnswers`, every answer must carry its
 * peer's signature over what was asked and returned (`protocol/answers.js`, docs/wire.md), or the hop fails.
 * @typedef {{call: (rpc: import('./rpc.js').RpcClient, frame: import('../protocol/wire.js').FrameInit, timeoutMs: number,
 *   positions?: number) => Promise<import('../protocol/wire.js').Frame>, config: {requestTimeoutMs: number, verifyAnswers?: boolean},
 *   model: string, signal: {peerId: string}}} HopClient
 */

/** @param {ArrayBufferView} view */
const bytesOf = (view) => new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
const hex = (/** @type {Uint8Array} */ bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * Concatenate step inputs along the sequence axis (for replay).
 * @param {StepInputs[]} parts
 * @returns {StepInputs | null}
 */
export function concatInputs(parts) {
  if (!parts.length) return null;
  const [batch, , width] = parts[0].hidden.dims;
  const total = parts.reduce((n, p) => n + p.hidden.dims[1], 0);
  const hidden = new Float32Array(batch * total * width);
  const mask = new BigInt64Array(batch * total);
  const positions = new BigInt64Array(batch * total);
  let offset = 0;
  for (const part of parts) {
    const seq = part.hidden.dims[1];
    for (let b = 0; b < batch; b++) {
      hidden.set(part.hidden.data.subarray(b * seq * width, (b + 1) * seq * width), (b * total + offset) * width);
      mask.set(part.mask.subarray(b * seq, (b + 1) * seq), b * total + offset);
      positions.set(part.positions.subarray(b * seq, (b + 1) * seq), b * total + offset);
    }
    offset += seq;
  }
  return { hidden: { data: hidden, dims: [batch, total, width] }, mask, positions };
}

/**
 * Positions of new tokens: the count of real tokens before each one (left padding gets position 0),
 * Python's `chain.position_ids_for`.
 * @param {BigInt64Array} mask  [batch, seq] of the new tokens
 * @param {number} batch
 * @param {number[]} pastCounts  real tokens already in the session, per row
 */
export function positionIdsFor(mask, batch, pastCounts) {
  const seq = mask.length / batch;
  const positions = new BigInt64Array(mask.length);
  for (let b = 0; b < batch; b++) {
    let count = BigInt(pastCounts[b]);
    for (let i = 0; i < seq; i++) {
      count += mask[b * seq + i];
      const p = count - 1n;
      positions[b * seq + i] = p < 0n ? 0n : p;
    }
  }
  return positions;
}

/** One peer serving one span within a session, and what we sent it (for replay). */
export class Hop {
  /**
   * @param {HopClient} client
   * @param {string} peerId
   * @param {number} start
   * @param {number} end
   * @param {import('./rpc.js').RpcClient} rpc
   * @param {Uint8Array} [session]  the session's 16-byte id (a hold written for it names it); default: a new one
   */
  constructor(client, peerId, start, end, rpc, session = crypto.getRandomValues(new Uint8Array(16))) {
    this.client = client;
    this.peerId = peerId;
    this.start = start;
    this.end = end;
    this.rpc = rpc;
    this.session = session;
    this.nextStep = 0;
    /** @type {StepInputs[]} */
    this.history = [];
    /** token positions sent and answered with usable hidden states: what the receipt may claim */
    this.tokens = 0;
    /** the input chain through the last step answered (`protocol/answers.js`) */
    this.chain = INPUT_CHAIN_START;
    /** @type {Hidden[]} what each step returned, for spot checks (`spot_check.js`) */
    this.outputs = [];
    /** @type {(SignedAnswer | null)[]} each step's signed answer (null when answers are not verified) */
    this.answers = [];
  }

  /**
   * @param {StepInputs} inputs
   * @param {number} flags
   * @returns {Promise<Hidden>}
   */
  async forward({ hidden, mask, positions }, flags = NO_FLAGS) {
    const [batch, seq] = hidden.dims;
    const frame = {
      type: FrameType.FORWARD,
      session: this.session,
      step: this.nextStep,
      flags,
      tensors: [
        floatTensor(HIDDEN_IN, hidden.dims, hidden.data),
        { name: ATTENTION_MASK, dtype: /** @type {const} */ ('int64'), shape: [batch, seq], data: mask },
        { name: POSITION_IDS, dtype: /** @type {const} */ ('int64'), shape: [batch, seq], data: positions },
      ],
    };
    const answer = await this.client.call(this.rpc, frame, this.client.config.requestTimeoutMs, batch * seq);
    const out = readHidden(answer, this.peerId, hidden.dims);
    this.tokens += batch * seq;
    const digests = await Promise.all(frame.tensors.map((t) => tensorDigest(t.dtype, t.shape, bytesOf(t.data))));
    const chain = await chainInput(this.chain, digests);
    const signed = this.client.config.verifyAnswers ? await this.#checkAnswer(answer, chain, seq) : null;
    this.chain = chain;
    this.outputs.push(out);
    this.answers.push(signed);
    this.nextStep++;
    return out;
  }

  /**
   * The peer's signed answer must be exactly what we sent and got (Python's `spot_check.AnswerCheck`).
   * @param {import('../protocol/wire.js').Frame} answer
   * @param {string} chain
   * @param {number} seq
   * @returns {Promise<SignedAnswer>}
   */
  async #checkAnswer(answer, chain, seq) {
    const out = frameTensor(answer, HIDDEN_OUT);
    const expected = {
      session: hex(this.session),
      model: this.client.model,
      start: this.start,
      end: this.end,
      step: this.nextStep,
      tokens: seq,
      input: chain,
      output: await tensorDigest(out.dtype, out.shape, out.data),
      client: this.client.signal.peerId,
      server: this.peerId,
    };
    const who = `peer ${this.peerId.slice(0, 12)}…`;
    const signed = /** @type {{body?: unknown, signature?: unknown} | undefined} */ (answer.meta[ANSWER_META_KEY]);
    if (signed === undefined || signed === null || typeof signed !== 'object') {
      throw new BadAnswerError(`unsigned: ${who} returned an answer without a signature`);
    }
    let same = false;
    try {
      same = canonicalJson(signed.body) === canonicalJson(expected);
    } catch {
      same = false;
    }
    if (!same) throw new BadAnswerError(`wrong_answer: ${who} signed an answer that differs from what it returned`);
    try {
      await verify(this.peerId, answerSigningBytes(expected), signed.signature);
    } catch (err) {
      throw new BadAnswerError(`bad_signature: ${who}'s answer is not signed by it`, { cause: err });
    }
    return { body: expected, signature: /** @type {string} */ (signed.signature) };
  }
}

/**
 * The `hidden_states_out` of an answer: a finite float tensor of the shape sent, else a hop failure.
 * @param {import('../protocol/wire.js').Frame} answer
 * @param {string} peerId
 * @param {number[]} dims
 * @returns {Hidden}
 */
function readHidden(answer, peerId, dims) {
  const tensor = frameTensor(answer, HIDDEN_OUT); // MetadataError (a WireError) when missing
  if (tensor.dtype === 'int64') throw new TensorError(`peer ${peerId.slice(0, 16)} returned ${HIDDEN_OUT} as int64, not float`);
  checkFinite(tensor); // NonFiniteError
  if (tensor.shape.length !== dims.length || tensor.shape.some((d, i) => d !== dims[i])) {
    throw new BadAnswerError(
      `peer ${peerId.slice(0, 16)} returned hidden states [${tensor.shape.join(', ')}] for [${dims.join(', ')}]`,
    );
  }
  return { data: tensorToFloat32(tensor).slice(), dims: [...dims] };
}

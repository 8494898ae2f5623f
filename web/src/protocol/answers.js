// @ts-check
/**
 * Signed answers, as `python_peer/core/answers.py`: a serving peer's commitment to what it returned for
 * one FORWARD step (session, span, step, the input chain of what the session received, the output's
 * sha256), signed with `ANSWER_CONTEXT` and carried in the RESULT frame's metadata under
 * `ANSWER_META_KEY` (docs/wire.md). Tensors are hashed over their canonical bytes (the canonical JSON of
 * `{dtype, shape}`, a newline, the little-endian data), so both languages hash the same bytes.
 * `tests/vectors/ledger/evidence.json` holds the golden values (`web/test/answers.test.js`).
 */

import { ANSWER_CONTEXT, ANSWER_META_KEY, INPUT_CHAIN_START } from './constants.js';
import { canonicalJson } from './canonical.js';

export { ANSWER_CONTEXT, ANSWER_META_KEY, INPUT_CHAIN_START };

const encoder = new TextEncoder();

/** @param {ArrayBuffer} buffer */
const hexOf = (buffer) => Array.from(new Uint8Array(buffer), (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * sha256 (hex) of a tensor's canonical bytes.
 * @param {string} dtype
 * @param {readonly number[]} shape
 * @param {Uint8Array} data  the raw little-endian bytes, as the frame carries them
 * @returns {Promise<string>}
 */
export async function tensorDigest(dtype, shape, data) {
  const head = encoder.encode(canonicalJson({ dtype, shape: [...shape] }));
  const bytes = new Uint8Array(head.length + 1 + data.byteLength);
  bytes.set(head, 0);
  bytes[head.length] = 0x0a;
  bytes.set(data, head.length + 1);
  return hexOf(await crypto.subtle.digest('SHA-256', bytes));
}

/**
 * The input chain after one more step: sha256 of the previous chain and the step's input digests
 * (hidden states, attention mask, position ids), joined by `:`.
 * @param {string} previous
 * @param {readonly string[]} stepDigests
 * @returns {Promise<string>}
 */
export async function chainInput(previous, stepDigests) {
  return hexOf(await crypto.subtle.digest('SHA-256', encoder.encode([previous, ...stepDigests].join(':'))));
}

/**
 * The bytes a server signs: `ANSWER_CONTEXT`, a newline, the canonical answer body.
 * @param {Record<string, unknown>} body
 */
export function answerSigningBytes(body) {
  const context = encoder.encode(ANSWER_CONTEXT + '\n');
  const json = encoder.encode(canonicalJson(body));
  const bytes = new Uint8Array(context.length + json.length);
  bytes.set(context, 0);
  bytes.set(json, context.length);
  return bytes;
}

/**
 * The signed answer a server puts in its RESULT metadata.
 * @param {{sign: (bytes: Uint8Array) => Promise<string>}} identity
 * @param {{session: string, model: string, start: number, end: number, step: number, tokens: number,
 *   input: string, output: string, client: string, server: string}} answer
 * @returns {Promise<{body: Record<string, unknown>, signature: string}>}
 */
export async function signAnswer(identity, answer) {
  const body = { ...answer };
  return { body, signature: await identity.sign(answerSigningBytes(body)) };
}

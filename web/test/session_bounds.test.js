// @ts-check
/**
 * A session holds at most the model's context (`max_position_embeddings`, GPT-2's `n_positions`), as in
 * tests/fast/test_positions.py and test_context.py:
 *
 * - the browser span server refuses a FORWARD whose `position_ids` go past the context or the session's
 *   `max_length` (or below 0), or of no token, with `bad_shape`, before anything runs, and the session goes on; the frames
 *   are built with the wire codec, as any client would send them;
 * - the browser client refuses to open a session longer than the context before any peer is asked (a
 *   peer's refusal of its last steps would read as one peer failing after another, each banned);
 * - a generation asked for more tokens than the context has room for stops where it ends, for "length".
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { GenerationError, generate, samplingParams, tokenBudget } from '../src/client/generate.js';
import { MeshError } from '../src/client/mesh_client.js';
import { SpanServer } from '../src/node/span_server.js';
import { MAX_BATCH } from '../src/protocol/constants.js';
import { ErrorCode, FrameType, decodeFrame, encodeFrame, makeFrame } from '../src/protocol/wire.js';
import { CLIENT_CONFIG, FakeBlocks, FakeMesh, HIDDEN, MODEL, fakeClient, fakeManifest, ones, tokens } from './support/mesh_fakes.js';

const CONTEXT = 16;
const CLIENT = 'c'.repeat(64);
const A = 'a'.repeat(64);
const B = 'b'.repeat(64);

/** The fake model with a context of `CONTEXT` positions. */
function manifestWithContext() {
  const manifest = fakeManifest();
  return { ...manifest, model: { ...manifest.model, config: { ...manifest.model.config, max_position_embeddings: CONTEXT } } };
}

/** @param {import('../src/protocol/wire.js').FrameInit} init */
const wire = (init) => decodeFrame(encodeFrame(makeFrame(init)));

/** @param {Uint8Array} session @param {number} maxLength */
const open = (session, maxLength) =>
  wire({ type: FrameType.OPEN, session, step: 0, meta: /** @type {any} */ ({ model: MODEL, start: 0, end: 2, batch: 1, max_length: maxLength }) });

/** @param {Uint8Array} session @param {number} step @param {number[]} positions */
function forward(session, step, positions) {
  const n = positions.length;
  return wire({
    type: FrameType.FORWARD,
    session,
    step,
    tensors: [
      { name: 'hidden_states', dtype: 'float32', shape: [1, n, HIDDEN], data: new Float32Array(n * HIDDEN).fill(0.5) },
      { name: 'attention_mask', dtype: 'int64', shape: [1, n], data: new BigInt64Array(n).fill(1n) },
      { name: 'position_ids', dtype: 'int64', shape: [1, n], data: BigInt64Array.from(positions.map(BigInt)) },
    ],
  });
}

test('the span server refuses positions past the context or max_length with bad_shape; nothing runs, the session goes on', async () => {
  const blocks = new FakeBlocks(0, 2);
  const server = new SpanServer(/** @type {any} */ (manifestWithContext()), { start: 0, end: 2 }, /** @type {any} */ ([blocks]));
  const short = new Uint8Array(16).fill(1);
  const long = new Uint8Array(16).fill(2);
  assert.equal((await server.handle(CLIENT, open(short, 8))).type, FrameType.RESULT);
  assert.equal((await server.handle(CLIENT, open(long, 2 * CONTEXT))).type, FrameType.RESULT);

  /** @type {[Uint8Array, number[], RegExp][]} */
  const refused = [
    [short, [1e9], /position_ids 1000000000\.\.1000000000 are outside 0\.\.7/],
    [short, [8], /outside 0\.\.7 \(the session's max_length 8, the model's context 16\)/],
    [short, [-1, 0, 1], /position_ids -1\.\.1 are outside/],
    [long, [CONTEXT], /outside 0\.\.15 \(the session's max_length 32, the model's context 16\)/], // max_length allows it; the model not
    [short, [], /with at least one token/], // a step of none is paid for by nothing, yet would run, push and keep
  ];
  for (const [session, positions, message] of refused) {
    const answer = await server.handle(CLIENT, forward(session, 0, positions));
    assert.equal(answer.type, FrameType.ERROR);
    assert.equal(answer.meta.code, ErrorCode.BAD_SHAPE);
    assert.match(String(answer.meta.message), message);
  }
  assert.equal(server.tokensServed, 0, 'nothing was computed for a refused frame');
  assert.ok([...blocks.sessions.values()].every((s) => s.seen === 0));

  // Both sessions are still at step 0 and run to their last position.
  assert.equal((await server.handle(CLIENT, forward(short, 0, [0, 1, 2]))).type, FrameType.RESULT);
  assert.equal((await server.handle(CLIENT, forward(short, 1, [7]))).type, FrameType.RESULT);
  assert.equal((await server.handle(CLIENT, forward(long, 0, [CONTEXT - 1]))).type, FrameType.RESULT);
});

test('the client refuses a session longer than the context before any peer is asked; one of the whole context runs', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  const client = fakeClient(mesh, { config: { ...CLIENT_CONFIG, verifyAnswers: false }, manifest: manifestWithContext() });
  assert.equal(client.context, CONTEXT);
  /** @type {[number, number, RegExp][]} */
  const wrong = [
    [1, CONTEXT + 1, /max_length 17 must be an integer in 1\.\.16; the model's context holds 16/],
    [1, 0, /max_length 0 must be/],
    [0, 8, new RegExp(`batch 0 must be an integer in 1\\.\\.${MAX_BATCH}`)],
    [MAX_BATCH + 1, 8, /batch 65 must be/],
  ];
  for (const [batch, maxLength, message] of wrong) await assert.rejects(client.open(batch, maxLength), (err) => err instanceof MeshError && message.test(err.message));
  for (const peer of [A, B]) assert.equal(mesh.peers.get(peer)?.seen.length, 0, 'no frame reached a peer');
  assert.ok(!client.bans.banned(A) && !client.bans.banned(B));

  const session = await client.open(1, CONTEXT);
  await session.step(tokens(Array.from({ length: CONTEXT - 1 }, (_, i) => i)), ones(CONTEXT - 1));
  await session.step(tokens([3]), ones(1)); // the last position
  await assert.rejects(session.step(tokens([4]), ones(1)), /max_length 16 would be exceeded/);
  assert.equal(session.failovers, 0);
  await session.close();
  await client.close();
});

test('a generation stops where the context ends, for "length"; a prompt that fills it is refused', async () => {
  assert.equal(tokenBudget(null, 10, 50), 50);
  assert.equal(tokenBudget(CONTEXT, 10, 50), 6);
  assert.equal(tokenBudget(CONTEXT, 10, 3), 3);
  assert.throws(() => tokenBudget(CONTEXT, CONTEXT, 1), (err) => err instanceof GenerationError && /the prompt is 16 tokens; this model's context holds 16/.test(err.message));

  const log = { opened: /** @type {number[]} */ ([]), steps: 0 };
  const pipeline = {
    context: CONTEXT,
    async open(/** @type {number} */ _batch, /** @type {number} */ maxLength) {
      log.opened.push(maxLength);
      return {
        async step() {
          log.steps++;
          const logits = new Float32Array(8);
          logits[1 + (log.steps % 5)] = 1; // never token 0, the end of sequence
          return { data: logits, dims: [1, 1, 8] };
        },
        async close() {},
      };
    },
  };
  const tokenizer = /** @type {any} */ ({ eosTokenIds: new Set([0]), decode: (/** @type {number[]} */ ids) => ids.join(' ') });
  const prompt = Array.from({ length: CONTEXT - 4 }, (_, i) => i + 1);
  const result = await generate(pipeline, tokenizer, prompt, samplingParams({ maxTokens: 50 }));
  assert.equal(result.tokenIds.length, 4);
  assert.equal(result.finishReason, 'length');
  assert.deepEqual(log.opened, [CONTEXT]);
  assert.equal(log.steps, 4, 'the prompt and three decode steps: the last token takes none');
});

// @ts-check
/**
 * Sampling and the generation loop (src/client/generate.js): greedy is np.argmax, top-p keeps the
 * nucleus, the seeded generator reproduces its draws, parameters out of range are refused, and the
 * loop streams text, stops at end-of-sequence or a stop string and always closes its session.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { GenerationError, argmax, generate, makeRng, sample, samplingParams, stream } from '../src/client/generate.js';

test('greedy picks the first highest logit, as np.argmax', () => {
  assert.equal(argmax([1, 3, 3, 2]), 1);
  const greedy = samplingParams({ temperature: 0 });
  assert.equal(sample(Float32Array.of(0.5, -1, 7, 7), greedy, () => 0.99), 2);
  assert.equal(sample([1, 2], samplingParams({ temperature: 1e-7 }), () => 0.99), 1);
});

test('the seeded generator repeats its draws, stays in [0, 1) and differs between seeds', () => {
  const a = makeRng(42);
  const b = makeRng(42);
  const drawsA = Array.from({ length: 1000 }, a);
  assert.deepEqual(Array.from({ length: 1000 }, b), drawsA);
  assert.ok(drawsA.every((u) => u >= 0 && u < 1));
  assert.notDeepEqual(Array.from({ length: 10 }, makeRng(43)), drawsA.slice(0, 10));
  const unseeded = makeRng(null)();
  assert.ok(unseeded >= 0 && unseeded < 1);
});

test('sampling follows the softmax of logits / temperature', () => {
  const params = samplingParams({ temperature: 1, seed: 7 });
  const rng = makeRng(7);
  const counts = [0, 0];
  for (let i = 0; i < 4000; i++) counts[sample([0, Math.log(3)], params, rng)]++;
  assert.ok(Math.abs(counts[1] / 4000 - 0.75) < 0.03, `${counts}`);
  // the draw u picks the first token whose cumulative probability passes it
  assert.equal(sample([0, Math.log(3)], params, () => 0.2), 0);
  assert.equal(sample([0, Math.log(3)], params, () => 0.3), 1);
});

test('top-p keeps the smallest set of tokens whose probability reaches p, in a stable order', () => {
  const logits = [Math.log(0.1), Math.log(0.6), Math.log(0.3)];
  const nucleus = samplingParams({ temperature: 1, topP: 0.5 });
  for (const u of [0, 0.5, 0.999]) assert.equal(sample(logits, nucleus, () => u), 1);
  const two = samplingParams({ temperature: 1, topP: 0.85 });
  assert.equal(sample(logits, two, () => 0.6), 1); // 0.6 / 0.9 of the kept mass is token 1
  assert.equal(sample(logits, two, () => 0.7), 2);
  const ties = samplingParams({ temperature: 1, topP: 0.5 });
  assert.equal(sample([0, 0, 0, 0], ties, () => 0.999), 1); // two of four ties kept: the first two
});

test('parameters out of range are refused', () => {
  for (const bad of [{ maxTokens: 0 }, { temperature: -1 }, { temperature: 11 }, { topP: 0 }, { topP: 1.5 },
    { seed: -1 }, { seed: 2 ** 32 }, { stop: [''] }]) {
    assert.throws(() => samplingParams(bad), GenerationError, JSON.stringify(bad));
  }
  assert.deepEqual(samplingParams(), { maxTokens: 128, temperature: 0, topP: 1, seed: null, stop: [] });
});

/** Token i is the letter 'a' + i; token 0 is end-of-sequence. */
const tokenizer = /** @type {any} */ ({
  eosTokenIds: new Set([0]),
  decode: (/** @type {number[]} */ ids) => ids.map((i) => String.fromCharCode(97 + i)).join(''),
});

/**
 * A pipeline whose logits pick the scripted tokens in turn (greedy), recording what it is fed.
 * @param {number[]} script
 */
function scriptedPipeline(script) {
  const log = { opened: /** @type {number[][]} */ ([]), fed: /** @type {number[][]} */ ([]), closed: 0 };
  let turn = 0;
  const pipeline = {
    async open(/** @type {number} */ batch, /** @type {number} */ maxLength) {
      log.opened.push([batch, maxLength]);
      return {
        async step(/** @type {BigInt64Array} */ ids) {
          log.fed.push(Array.from(ids, Number));
          const logits = new Float32Array(8);
          logits[script[turn++]] = 1;
          return { data: logits, dims: [1, 1, 8] };
        },
        async close() {
          log.closed++;
        },
      };
    },
  };
  return { pipeline, log };
}

test('generation feeds each sampled token back, streams text and stops at end-of-sequence', async () => {
  const { pipeline, log } = scriptedPipeline([7, 4, 11 % 8, 0, 5]);
  const result = await generate(pipeline, tokenizer, [1, 2], samplingParams({ maxTokens: 10 }));
  assert.deepEqual(result, { text: 'hed', tokenIds: [7, 4, 3], finishReason: 'stop', promptTokens: 2 });
  assert.deepEqual(log.opened, [[1, 12]]);
  assert.deepEqual(log.fed, [[1, 2], [7], [4], [3]]);
  assert.equal(log.closed, 1);
});

test('stop strings end generation before them; maxTokens ends it with "length"', async () => {
  const stopped = await generate(scriptedPipeline([1, 2, 3, 4]).pipeline, tokenizer, [1], samplingParams({ stop: ['cd'] }));
  assert.equal(stopped.text, 'b');
  assert.equal(stopped.finishReason, 'stop');
  const { pipeline, log } = scriptedPipeline([1, 2, 3, 4]);
  const pieces = [];
  for await (const piece of stream(pipeline, tokenizer, [1], samplingParams({ maxTokens: 3 }))) pieces.push(piece);
  assert.deepEqual(pieces, ['b', 'c', 'd']);
  assert.equal(log.fed.length, 3);
  assert.equal(log.closed, 1);
});

test('an aborted signal stops after the current step and still closes the session', async () => {
  const controller = new AbortController();
  const { pipeline, log } = scriptedPipeline([1, 2, 3, 4]);
  /** @type {import('../src/client/generate.js').Generation} */
  const result = { text: '', tokenIds: [], finishReason: 'length', promptTokens: 0 };
  for await (const _ of stream(pipeline, tokenizer, [1], samplingParams({ maxTokens: 10 }), { result, signal: controller.signal })) {
    controller.abort();
  }
  assert.equal(result.finishReason, 'cancelled');
  assert.equal(log.closed, 1);
  await assert.rejects(generate(pipeline, tokenizer, [], samplingParams()), GenerationError);
});

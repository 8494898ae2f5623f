// @ts-check
/**
 * The span choice of the browser equals Python's on the golden vectors (tests/vectors/span_choice.json,
 * written by tests/vectors/generate_span_choice.py from python_peer/core/memory_budget.py): the span
 * chosen and its figures, every one-line refusal word for word, and bad `memory` objects refused. Then the
 * backend's budget: WASM stays under 4 GiB less the runtime, WebGPU follows the device.
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { NodeError, backendBudget } from '../src/node/config.js';
import { blockFigures, checkSpanFits, chooseSpan, describeNeed, leastServedChoice, spanNeed } from '../src/node/span_choice.js';
import { WASM_MEMORY_BYTES, WASM_RUNTIME_BYTES } from '../src/protocol/constants.js';

const VECTORS = JSON.parse(await readFile(new URL('../../tests/vectors/span_choice.json', import.meta.url), 'utf8'));
const GIB = 2 ** 30;

/** @param {any} need */
const plain = (need) => ({ ...need, describe: describeNeed(need) });

test('the chosen span, its figures and the refusals equal Python on every vector', () => {
  assert.ok(VECTORS.choose.length >= 10);
  for (const c of VECTORS.choose) {
    const spans = c.manifest.shards.map((/** @type {any} */ s) => ({ start: s.start, end: s.end }));
    const run = () => chooseSpan(spans, c.counts, blockFigures(c.manifest), c.budget, c.manifest.model.name);
    if (c.error) assert.throws(run, (err) => err instanceof NodeError && err.message === c.error, c.error);
    else assert.deepEqual(plain(run()), c.expect);
  }
});

test('an explicit span is checked against the budget as Python checks it', () => {
  for (const c of VECTORS.check) {
    assert.deepEqual(plain(spanNeed(blockFigures(c.manifest), c.span)), c.expect);
    const run = () => checkSpanFits(c.manifest, c.span, c.budget);
    if (c.error) assert.throws(run, (err) => err instanceof NodeError && err.message === c.error);
    else assert.deepEqual(plain(run()), c.expect);
  }
  assert.ok(VECTORS.check.some((/** @type {any} */ c) => c.error?.startsWith('span 0-20 needs 3.1 GiB (2.6 GiB weights + 0.5 GiB KV')));
});

test('a manifest whose memory figures lie or are malformed is refused with Python\'s words', () => {
  for (const c of VECTORS.figures) {
    if (c.error) {
      assert.throws(() => blockFigures(c.manifest), (err) => err instanceof NodeError && err.message === c.error);
    } else {
      const f = blockFigures(c.manifest);
      assert.deepEqual({ weights: f.weightBytes, kv: f.kvBytesPerToken, context: f.context }, c.expect);
    }
  }
});

test('counts come from announcements: the second peer takes the half the first left', () => {
  const manifest = VECTORS.choose[1].manifest; // 12 blocks in four shards; two shards fit
  const budget = VECTORS.choose[1].budget;
  const name = manifest.model.name;
  const first = leastServedChoice(manifest, [], budget);
  assert.deepEqual(first.span, { start: 0, end: 6 });
  const announcements = [
    { peer_id: 'a'.repeat(64), serves: [{ model: name, start: 0, end: 6 }] },
    { peer_id: 'b'.repeat(64), serves: [{ model: 'another', start: 6, end: 12 }] }, // another model counts for nothing
  ];
  assert.deepEqual(leastServedChoice(manifest, /** @type {any} */ (announcements), budget).span, { start: 6, end: 12 });
});

test('WASM caps the budget under 4 GiB less the runtime; WebGPU goes beyond, bounded by the device', () => {
  const wasmLimit = WASM_MEMORY_BYTES - WASM_RUNTIME_BYTES;
  assert.equal(backendBudget(512 * 2 ** 20, 'wasm').bytes, 512 * 2 ** 20);
  const capped = backendBudget(16 * GIB, 'wasm');
  assert.equal(capped.bytes, wasmLimit);
  assert.match(capped.reason, /WASM/);
  assert.equal(backendBudget(16 * GIB, 'webgpu').bytes, 16 * GIB);
  assert.equal(backendBudget(16 * GIB, 'webgpu', { deviceMemoryGb: 8 }).bytes, 4 * GIB);
  assert.equal(backendBudget(3 * GIB, 'webgpu', { deviceMemoryGb: 8 }).bytes, 3 * GIB);
  // the same model: a WASM node takes a smaller span than a WebGPU node asked for the same 16 GiB
  const manifest = VECTORS.choose[0].manifest;
  const big = structuredClone(manifest);
  big.memory.block_weight_bytes = big.memory.block_weight_bytes.map(() => 700 * 2 ** 20);
  big.shards = big.shards.map((/** @type {any} */ s) => ({ ...s, bytes: 3 * 700 * 2 ** 20 }));
  const wasm = leastServedChoice(big, [], capped.bytes);
  const gpu = leastServedChoice(big, [], backendBudget(16 * GIB, 'webgpu').bytes);
  assert.ok(wasm.total <= wasmLimit && wasm.span.end - wasm.span.start < gpu.span.end - gpu.span.start, JSON.stringify([wasm, gpu]));
});

// @ts-check
/**
 * A float32 tensor to send is carried as float16 exactly when Python's `to_wire` would, with the same
 * bytes: the golden vectors tests/vectors/narrowing.json, written by tests/vectors/generate_narrowing.py.
 * The browser's span server sends its output through it and takes float16 hidden states.
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { SpanServer } from '../src/node/span_server.js';
import { FrameType, decodeFrame, encodeFrame, floatTensor, makeFrame, makeTensor, tensorToFloat32 } from '../src/protocol/wire.js';
import { FakeBlocks, HIDDEN, MODEL, fakeManifest } from './support/mesh_fakes.js';

const CLIENT = 'c'.repeat(64);
/** @param {import('../src/protocol/wire.js').FrameInit} init */
const wire = (init) => decodeFrame(encodeFrame(makeFrame(init)));

const VECTORS = JSON.parse(await readFile(new URL('../../tests/vectors/narrowing.json', import.meta.url), 'utf8'));

/** @param {string} hex */
const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
/** @param {ArrayBufferView} view */
const hexOf = (view) =>
  Array.from(new Uint8Array(view.buffer, view.byteOffset, view.byteLength), (b) => b.toString(16).padStart(2, '0')).join('');

test('every vector: the dtype Python carries it in, the same bytes, and the same values read back', () => {
  assert.ok(VECTORS.length >= 10);
  assert.ok(VECTORS.some((/** @type {any} */ c) => c.dtype === 'float16'));
  assert.ok(VECTORS.some((/** @type {any} */ c) => c.dtype === 'float32'));
  for (const c of VECTORS) {
    const values = new Float32Array(bytes(c.float32).buffer);
    const sent = floatTensor('hidden_states', c.shape, values);
    assert.equal(sent.dtype, c.dtype, c.case);
    assert.equal(hexOf(sent.data), c.data, c.case);
    const read = tensorToFloat32(makeTensor(sent.name, sent.dtype, sent.shape, sent.data));
    assert.equal(hexOf(read), c.float32, c.case); // lossless, NaN's bits and zero's sign included
  }
});

test('an empty tensor stays float32', () => {
  assert.equal(floatTensor('hidden_states', [1, 0, 4], new Float32Array(0)).dtype, 'float32');
});

test('the span server takes float16 hidden states and answers float16 values as float16, float32 otherwise', async () => {
  const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start: 0, end: 2 }, /** @type {any} */ ([new FakeBlocks(0, 2)]));
  const session = new Uint8Array(16).fill(9);
  const meta = { model: MODEL, start: 0, end: 2, batch: 1, max_length: 8 };
  const opened = await server.handle(CLIENT, wire({ type: FrameType.OPEN, session, step: 0, meta: /** @type {any} */ (meta) }));
  assert.equal(opened.type, FrameType.RESULT, JSON.stringify(opened.meta));
  // 0.5 carried as float16; the fake blocks make 0.5 * 0.5 + 1 = 1.25 at step 0 (a float16), 1.26 at step 1 (not)
  const half = floatTensor('hidden_states', [1, 1, HIDDEN], new Float32Array(HIDDEN).fill(0.5));
  assert.equal(half.dtype, 'float16');
  for (const [step, dtype, value] of /** @type {const} */ ([[0, 'float16', 1.25], [1, 'float32', Math.fround(1.26)]])) {
    const answer = await server.handle(
      CLIENT,
      wire({
        type: FrameType.FORWARD,
        session,
        step,
        tensors: [
          half,
          { name: 'attention_mask', dtype: 'int64', shape: [1, 1], data: BigInt64Array.from([1n]) },
          { name: 'position_ids', dtype: 'int64', shape: [1, 1], data: BigInt64Array.from([BigInt(step)]) },
        ],
      }),
    );
    assert.equal(answer.type, FrameType.RESULT, JSON.stringify(answer.meta));
    const out = answer.tensors[0];
    assert.equal(out.dtype, dtype);
    assert.deepEqual(Array.from(tensorToFloat32(out)), Array(HIDDEN).fill(value));
  }
});

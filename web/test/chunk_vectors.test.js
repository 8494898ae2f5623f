// @ts-check
/**
 * The chunk protocol's golden frames (tests/vectors/chunks/, docs/chunks.md) through the browser's codec:
 * each decodes to what index.json describes (uint8 tensors byte for byte, by length and sha256) and
 * encodes back to the same bytes; the protocol's names are the generated constants.
 */

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import * as constants from '../src/protocol/constants.js';
import * as wire from '../src/protocol/wire.js';

const CHUNKS = new URL('../../tests/vectors/chunks/', import.meta.url);
const INDEX = JSON.parse(readFileSync(new URL('index.json', CHUNKS), 'utf-8'));
const sha = (/** @type {Uint8Array} */ bytes) => createHash('sha256').update(bytes).digest('hex');
const hex = (/** @type {Uint8Array} */ bytes) => Buffer.from(bytes).toString('hex');

test('every chunk protocol frame decodes to its description and encodes back to its bytes', () => {
  for (const [name, expected] of Object.entries(INDEX)) {
    const bytes = new Uint8Array(readFileSync(new URL(name, CHUNKS)));
    const frame = wire.decodeFrame(bytes);
    assert.equal(wire.frameTypeName(frame.type), expected.type, name);
    assert.equal(hex(frame.session), expected.session, name);
    assert.deepEqual(frame.meta, expected.meta, name);
    const tensors = frame.tensors.map((t) => ({ name: t.name, dtype: t.dtype, bytes: t.data.length, sha256: sha(t.data) }));
    assert.deepEqual(tensors, expected.tensors, name);
    assert.deepEqual(wire.encodeFrame(frame), bytes, name);
  }
});

test('the chunk protocol constants are the Python core\'s', () => {
  assert.equal(constants.FrameType.CHUNK, 9);
  assert.equal(constants.DTYPE_SIZES.uint8, 1);
  assert.deepEqual(constants.ChunkKind, { MANIFEST: 'manifest', HAVE: 'have', CHUNK: 'chunk' });
  assert.deepEqual(constants.ChunkErrorCode, { NOT_SEEDED: 'not_seeded', BUSY: 'busy', RATE_LIMITED: 'rate_limited' });
  assert.equal(INDEX['chunk_request.bin'].meta.kind, constants.ChunkKind.CHUNK);
  assert.equal(INDEX['not_seeded.bin'].meta.code, constants.ChunkErrorCode.NOT_SEEDED);
});

test('a uint8 tensor is bytes: its values are the bytes, and it is never NaN', () => {
  const frame = wire.decodeFrame(new Uint8Array(readFileSync(new URL('chunk_answer.bin', CHUNKS))));
  const data = wire.frameTensor(frame, 'data');
  assert.deepEqual(wire.tensorValues(data), Array.from(data.data));
  wire.checkFinite(wire.makeTensor('x', 'uint8', [2], Uint8Array.of(0x7c, 0xff)));
});

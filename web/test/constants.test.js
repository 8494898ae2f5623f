// @ts-check
/**
 * web/src/protocol/constants.js is generated from the Python core (tests/test_js_constants.py keeps it
 * current): it imports in Node, holds the values the core defines, and the modules that mirror the
 * core re-export these very objects instead of writing the numbers again.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import * as constants from '../src/protocol/constants.js';
import * as wire from '../src/protocol/wire.js';
import * as signaling from '../src/signaling/client.js';

test('the wire constants hold the values of python_peer/core/wire.py', () => {
  assert.equal(constants.MAGIC, 'A4AF');
  assert.equal(constants.CHUNK_MAGIC, 'A4AC');
  assert.equal(constants.VERSION, 1);
  assert.equal(constants.HEADER_SIZE, 36);
  assert.equal(constants.MAX_FRAME_BYTES, 64 * 1024 * 1024);
  assert.equal(constants.MAX_SAFE_INT, Number.MAX_SAFE_INTEGER);
  assert.equal(constants.MAX_STEP, 2 ** 32 - 1);
  assert.deepEqual(constants.DTYPE_SIZES, { float32: 4, float16: 2, int64: 8, uint8: 1 });
  assert.deepEqual(constants.FrameFlags, { PREFILL: 1, REPLAY: 2 });
  assert.equal(constants.FrameType.FORWARD, 2);
  assert.equal(constants.FrameType.GOSSIP, 8);
  assert.equal(constants.FrameType.CHUNK, 9);
  assert.equal(constants.ErrorCode.PAYMENT_REQUIRED, 'payment_required');
  assert.equal(Object.keys(constants.ErrorCode).length, 10);
});

test('enums and tables are frozen', () => {
  for (const table of [constants.FrameType, constants.FrameFlags, constants.ErrorCode, constants.DTYPE_SIZES]) {
    assert.ok(Object.isFrozen(table));
  }
});

test('signaling, session and ledger constants are there too', () => {
  assert.equal(constants.ANNOUNCE_CONTEXT, 'ai4all/announce/v1');
  assert.equal(constants.MAX_TTL_MS, 600_000);
  assert.equal(constants.MAX_LAYER, 65_536);
  assert.equal(constants.PROBE_MISSES, 2);
  assert.equal(constants.RECEIPT_CONTEXT, 'ai4all/ledger/receipt/v1');
  for (const [name, value] of Object.entries(constants)) {
    assert.ok(typeof value === 'number' || typeof value === 'string' || Object.isFrozen(value), name);
    // the spot checks' rate floor is the one fraction; every other number is an exact integer
    if (typeof value === 'number') assert.ok(Number.isSafeInteger(value) || (name === 'SPOT_CHECK_FLOOR' && value > 0 && value < 1), `${name} is exact`);
  }
  assert.equal(constants.SPOT_CHECK_FLOOR, 0.05);
  assert.deepEqual({ ...constants.SPOT_CHECK_TOLERANCES }, { fp32: 0.01, fp16: 0.03, q8: 0.05, q4: 0.1 });
});

test('the codec and the signal client re-export the generated values, not copies', () => {
  assert.equal(wire.FrameType, constants.FrameType);
  assert.equal(wire.ErrorCode, constants.ErrorCode);
  assert.equal(wire.MAX_METADATA_BYTES, constants.MAX_METADATA_BYTES);
  assert.equal(wire.ALL_FLAGS, constants.FrameFlags.PREFILL | constants.FrameFlags.REPLAY);
  assert.equal(signaling.PROTOCOL_VERSION, constants.PROTOCOL_VERSION);
  assert.equal(signaling.MAX_SIGNAL_AGE_MS, constants.MAX_SIGNAL_AGE_MS);
  assert.equal(wire.TensorError.code, constants.ErrorCode.BAD_SHAPE);
});

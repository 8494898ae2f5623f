// @ts-check
/**
 * The JS codec (src/protocol/) in Node: every golden vector in tests/vectors/ decodes to what
 * index.json describes and encodes back to the same bytes; chunks cut and join like Python's; each
 * malformed frame is refused with the error class and code Python's decoder gives for it (the cases
 * and their answers are Python's rules in python_peer/core/wire.py, written down here; the Chromium
 * test tests/browser/test_wire_vectors.py compares thousands more against Python itself).
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';

import * as wire from '../src/protocol/wire.js';

const VECTORS = new URL('../../tests/vectors/', import.meta.url);
const INDEX = JSON.parse(readFileSync(new URL('index.json', VECTORS), 'utf-8'));
/** @param {string} name */
const load = (name) => new Uint8Array(readFileSync(new URL(name, VECTORS)));
/** @param {Uint8Array} bytes */
const hex = (bytes) => Buffer.from(bytes).toString('hex');
const SESSION = Uint8Array.from({ length: 16 }, (_, i) => i);
const UTF8 = new TextEncoder();

/**
 * A hand-assembled frame, each field free to be wrong on its own (tests/test_wire.py's raw_frame).
 * @param {string | Uint8Array} meta
 * @param {Uint8Array} [section]
 * @param {{magic?: string, version?: number, type?: number, flags?: number, step?: number,
 *   metaLen?: number, tensorsLen?: number, pad?: Uint8Array}} [fields]
 */
function rawFrame(meta, section = new Uint8Array(0), fields = {}) {
  const metaBytes = typeof meta === 'string' ? UTF8.encode(meta) : meta;
  const pad = fields.pad ?? new Uint8Array((8 - ((wire.HEADER_SIZE + metaBytes.length) % 8)) % 8);
  const out = new Uint8Array(wire.HEADER_SIZE + metaBytes.length + pad.length + section.length);
  const view = new DataView(out.buffer);
  out.set(UTF8.encode(fields.magic ?? wire.MAGIC), 0);
  out[4] = fields.version ?? wire.VERSION;
  out[5] = fields.type ?? wire.FrameType.FORWARD;
  view.setUint16(6, fields.flags ?? 0, true);
  out.set(SESSION, 8);
  view.setUint32(24, fields.step ?? 0, true);
  view.setUint32(28, fields.metaLen ?? metaBytes.length, true);
  view.setUint32(32, fields.tensorsLen ?? section.length, true);
  out.set(metaBytes, wire.HEADER_SIZE);
  out.set(pad, wire.HEADER_SIZE + metaBytes.length);
  out.set(section, wire.HEADER_SIZE + metaBytes.length + pad.length);
  return out;
}

/**
 * @param {string} name
 * @param {string} dtype
 * @param {unknown} shape
 * @param {unknown} offset
 * @param {unknown} nbytes
 */
const desc = (name, dtype, shape, offset, nbytes) => JSON.stringify({ dtype, name, nbytes, offset, shape });
/** @param {string[]} descriptors */
const tensorsMeta = (descriptors) => `{"tensors":[${descriptors.join(',')}]}`;

/**
 * What decoding gives: "OK", or the error's class name and code.
 * @param {Uint8Array} bytes
 * @param {{maxFrameBytes?: number}} [options]
 */
function outcome(bytes, options) {
  try {
    wire.decodeFrame(bytes, options);
    return 'OK';
  } catch (exc) {
    assert.ok(exc instanceof wire.WireError, `not a WireError: ${exc}`);
    return `${exc.name} ${exc.code}`;
  }
}

describe('golden vectors', () => {
  for (const entry of INDEX.frames) {
    test(`${entry.file} decodes to index.json and encodes to the same bytes`, () => {
      const bytes = load(entry.file);
      const frame = wire.decodeFrame(bytes);
      assert.equal(wire.frameTypeName(frame.type), entry.type);
      assert.equal(hex(frame.session), entry.session);
      assert.equal(frame.step, entry.step);
      const flags = Object.entries(wire.FrameFlags).filter(([, bit]) => frame.flags & bit).map(([n]) => n);
      assert.deepEqual(flags, entry.flags);
      assert.deepEqual(frame.meta, entry.meta);
      assert.deepEqual(
        frame.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape] })),
        entry.tensors.map((/** @type {any} */ t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
      );
      frame.tensors.forEach((t, i) => {
        const values = wire.tensorValues(t).map(Number);
        assert.deepEqual(values, entry.tensors[i].values); // deepEqual tells -0 from 0
      });
      assert.deepEqual(wire.encodeFrame(frame), bytes);
      const built = wire.encodeFrame({
        type: wire.FrameType[entry.type],
        session: Buffer.from(entry.session, 'hex'),
        step: entry.step,
        flags: entry.flags.reduce((/** @type {number} */ bits, /** @type {string} */ name) => bits | wire.FrameFlags[name], 0),
        meta: entry.meta,
        tensors: entry.tensors.map((/** @type {any} */ t) => wire.tensorFromValues(t.name, t.dtype, t.shape, t.values)),
      });
      assert.deepEqual(built, bytes);
    });

    test(`${entry.file}: every truncation is a TruncatedFrameError, a trailing byte a FrameLayoutError`, () => {
      const bytes = load(entry.file);
      for (let n = 0; n < bytes.length; n++) {
        assert.equal(outcome(bytes.subarray(0, n)), 'TruncatedFrameError bad_frame', `first ${n} bytes`);
      }
      const longer = new Uint8Array(bytes.length + 1);
      longer.set(bytes);
      assert.equal(outcome(longer), 'FrameLayoutError bad_frame');
    });

    test(`${entry.file}: every byte mutation decodes or is refused with a WireError`, () => {
      const bytes = load(entry.file);
      for (let i = 0; i < bytes.length; i++) {
        for (const bit of [0x01, 0x20, 0x80, 0xff]) {
          const mutated = bytes.slice();
          mutated[i] ^= bit;
          const answer = outcome(mutated);
          if (i >= 36 && answer === 'OK') continue; // a tensor byte: any value decodes
          if (i < 4) assert.equal(answer, 'BadMagicError bad_frame');
          if (i === 4) assert.equal(answer, 'UnsupportedVersionError bad_frame');
        }
      }
    });
  }

  for (const entry of INDEX.chunks) {
    test(`${entry.message_file} is cut into ${entry.files.join(', ')} and joined back in any order`, () => {
      const message = load(entry.message_file);
      const files = entry.files.map(load);
      assert.deepEqual(wire.chunkMessage(entry.message_id, message, entry.chunk_size), files);
      for (const order of [files.map((_, i) => i), files.map((_, i) => files.length - 1 - i)]) {
        const reassembler = new wire.Reassembler();
        const outs = order.map((/** @type {number} */ i) => reassembler.feed(files[i], 0));
        assert.ok(outs.slice(0, -1).every((o) => o === null));
        assert.deepEqual(outs.at(-1), message);
        assert.equal(reassembler.size, 0);
      }
    });
  }
});

describe('refusals carry the error code Python gives', () => {
  const f32 = load('forward_f32.bin');
  const ok = desc('x', 'float32', [2], 0, 8);
  const bad = desc('x', 'float99', [], 0, 0); // refused by the tensor checks, which come after the JSON's
  /** @type {Array<[string, Uint8Array, string]>} */
  const cases = [
    ['empty', new Uint8Array(0), 'TruncatedFrameError bad_frame'],
    ['header one byte short', f32.subarray(0, 35), 'TruncatedFrameError bad_frame'],
    ['bad magic', rawFrame('{}', undefined, { magic: 'A4AG' }), 'BadMagicError bad_frame'],
    ['version 2', rawFrame('{}', undefined, { version: 2 }), 'UnsupportedVersionError bad_frame'],
    ['type 11', rawFrame('{}', undefined, { type: 11 }), 'UnknownFrameTypeError bad_frame'],
    ['flags 4', rawFrame('{}', undefined, { flags: 4 }), 'UnknownFlagsError bad_frame'],
    ['metadata over 64 KiB', rawFrame('{}', undefined, { metaLen: wire.MAX_METADATA_BYTES + 1 }), 'LimitExceededError bad_frame'],
    ['declared tensors over the frame limit', rawFrame('{}', undefined, { tensorsLen: wire.MAX_FRAME_BYTES }), 'LimitExceededError bad_frame'],
    ['more tensor bytes declared than sent', rawFrame('{}', undefined, { tensorsLen: 8 }), 'TruncatedFrameError bad_frame'],
    ['non-zero padding', rawFrame('{}', undefined, { pad: Uint8Array.of(0, 0, 0, 1) }), 'FrameLayoutError bad_frame'],
    ['empty metadata', rawFrame(''), 'MetadataError bad_frame'],
    ['top-level array', rawFrame('[]'), 'MetadataError bad_frame'],
    ['space after colon', rawFrame('{"a": 1}'), 'MetadataError bad_frame'],
    ['unsorted keys', rawFrame('{"b":1,"a":2}'), 'MetadataError bad_frame'],
    ['keys in code point order, a bad tensor', rawFrame(`{"a":{"\uffff":1,"\u{10000}":2},"tensors":[${bad}]}`), 'TensorError bad_shape'],
    ['keys in UTF-16 order, a bad tensor', rawFrame(`{"a":{"\u{10000}":2,"\uffff":1},"tensors":[${bad}]}`), 'MetadataError bad_frame'],
    ['duplicate key', rawFrame('{"a":1,"a":1}'), 'MetadataError bad_frame'],
    ['not UTF-8', rawFrame(Uint8Array.of(0x7b, 0x22, 0x61, 0x22, 0x3a, 0x22, 0xff, 0x22, 0x7d)), 'MetadataError bad_frame'],
    ['BOM', rawFrame(Uint8Array.of(0xef, 0xbb, 0xbf, 0x7b, 0x7d)), 'MetadataError bad_frame'],
    ['escaped e-acute', rawFrame('{"a":"\\u00e9"}'), 'MetadataError bad_frame'],
    ['controls as Python writes them', rawFrame('{"a":"\\u0000\\u001f\\b"}'), 'OK'],
    ['lone surrogate', rawFrame('{"a":"\\ud800"}'), 'MetadataError bad_frame'],
    ['__proto__ key', rawFrame('{"__proto__":{"x":1}}'), 'OK'],
    ['non-ASCII key', rawFrame('{"é":1}'), 'MetadataError bad_frame'],
    ['minus zero', rawFrame('{"a":-0}'), 'MetadataError bad_frame'],
    ['float', rawFrame('{"a":1.5}'), 'MetadataError bad_frame'],
    ['NaN', rawFrame('{"a":NaN}'), 'MetadataError bad_frame'],
    ['2**53', rawFrame('{"a":9007199254740992}'), 'MetadataError bad_frame'],
    ['max safe int', rawFrame('{"a":9007199254740991,"b":-9007199254740991}'), 'OK'],
    ['depth 16', rawFrame(`{"a":${'['.repeat(16)}${']'.repeat(16)}}`), 'OK'],
    ['depth 17', rawFrame(`{"a":${'['.repeat(17)}${']'.repeat(17)}}`), 'MetadataError bad_frame'],
    ['depth 30000', rawFrame(`${'['.repeat(30000)}${']'.repeat(30000)}`), 'MetadataError bad_frame'],
    ['depth 5000 inside an object', rawFrame(`{"a":${'['.repeat(5000)}${']'.repeat(5000)}}`), 'MetadataError bad_frame'],
    ['tensors an empty list', rawFrame('{"tensors":[]}'), 'MetadataError bad_frame'],
    ['descriptor extra key', rawFrame('{"tensors":[{"dtype":"int64","extra":1,"name":"x","nbytes":0,"offset":0,"shape":[0]}]}'), 'MetadataError bad_frame'],
    ['one valid tensor', rawFrame(tensorsMeta([ok]), new Uint8Array(8)), 'OK'],
    ['dtype unknown', rawFrame(tensorsMeta([desc('x', 'float64', [1], 0, 8)]), new Uint8Array(8)), 'TensorError bad_shape'],
    ['dtype toString', rawFrame(tensorsMeta([desc('x', 'toString', [1], 0, 8)]), new Uint8Array(8)), 'TensorError bad_shape'],
    ['dim negative', rawFrame(tensorsMeta([desc('x', 'float32', [-1], 0, 0)])), 'TensorError bad_shape'],
    ['dim 2**31', rawFrame(tensorsMeta([desc('x', 'float32', [2 ** 31], 0, 4 * 2 ** 31)])), 'TensorError bad_shape'],
    ['rank 9', rawFrame(tensorsMeta([desc('x', 'int64', Array(9).fill(1), 0, 8)]), new Uint8Array(8)), 'LimitExceededError bad_frame'],
    ['nbytes short', rawFrame(tensorsMeta([desc('x', 'float32', [2], 0, 4)]), new Uint8Array(4)), 'TensorError bad_shape'],
    ['first offset 8', rawFrame(tensorsMeta([desc('x', 'float32', [2], 8, 8)]), new Uint8Array(16)), 'FrameLayoutError bad_frame'],
    ['section longer than the tensors', rawFrame(tensorsMeta([ok]), new Uint8Array(16)), 'FrameLayoutError bad_frame'],
    ['name empty', rawFrame(tensorsMeta([desc('', 'float32', [2], 0, 8)]), new Uint8Array(8)), 'MetadataError bad_frame'],
    ['duplicate names', rawFrame(tensorsMeta([desc('a', 'int64', [1], 0, 8), desc('a', 'int64', [1], 8, 8)]), new Uint8Array(16)), 'DuplicateTensorError bad_frame'],
    ['17 tensors', rawFrame(tensorsMeta(Array.from({ length: 17 }, (_, i) => desc(`t${i}`, 'int64', [1], 8 * i, 8))), new Uint8Array(136)), 'LimitExceededError bad_frame'],
    ['2**53 after a bad tensor: the tensor first, as in Python', rawFrame(`{"a":${2 ** 53},"tensors":[${desc('x', 'float99', [], 0, 0)}]}`), 'TensorError bad_shape'],
    ['non-ASCII key after a bad tensor', rawFrame(`{"tensors":[${desc('x', 'float99', [], 0, 0)}],"é":1}`), 'TensorError bad_shape'],
    ['ERROR without message', rawFrame('{"code":"internal"}', undefined, { type: wire.FrameType.ERROR }), 'MetadataError bad_frame'],
    ['ERROR message over 1024 bytes', rawFrame(JSON.stringify({ code: 'x', message: 'é'.repeat(512) + '!' }), undefined, { type: wire.FrameType.ERROR }), 'MetadataError bad_frame'],
  ];
  for (const [label, bytes, expected] of cases) {
    test(label, () => assert.equal(outcome(bytes), expected));
  }

  test('a NaN in a float tensor is a NonFiniteError, code non_finite', () => {
    const t = wire.tensorFromValues('x', 'float32', [3], [1, NaN, 2]);
    assert.throws(() => wire.checkFinite(t), (e) => e instanceof wire.NonFiniteError && e.code === 'non_finite');
    const h = wire.tensorFromValues('y', 'float16', [2], [0, -Infinity]);
    assert.throws(() => wire.checkFinite(h), /-inf at flat index 1/);
  });

  test('maxFrameBytes applies to the whole frame', () => {
    assert.equal(outcome(f32, { maxFrameBytes: f32.length }), 'OK');
    assert.equal(outcome(f32, { maxFrameBytes: f32.length - 1 }), 'LimitExceededError bad_frame');
  });
});

describe('encoding', () => {
  test('metadata is written as Python writes it: sorted by code point, raw UTF-8, Python escapes', () => {
    const meta = { b: 'é😀\u2028/', a: '"\\\u0000\u001f\b\n', B: 1, _: [true, null, -5] };
    const bytes = wire.encodeFrame({ type: wire.FrameType.PING, meta });
    const text = new TextDecoder().decode(bytes.subarray(wire.HEADER_SIZE, wire.HEADER_SIZE + bytes[28]));
    assert.equal(text, '{"B":1,"_":[true,null,-5],"a":"\\"\\\\\\u0000\\u001f\\b\\n","b":"é😀\u2028/"}');
    assert.deepEqual(wire.decodeFrame(bytes).meta, meta);
  });

  test('floats, unsafe integers and reserved keys are refused before anything is written', () => {
    const refused = (/** @type {Record<string, unknown>} */ meta) =>
      assert.throws(() => wire.encodeFrame({ type: wire.FrameType.PING, meta }), wire.MetadataError);
    refused({ a: 0.5 });
    refused({ a: 2 ** 53 });
    refused({ tensors: [] });
    refused({ é: 1 });
  });

  test('round trips of every dtype, flags and steps', () => {
    const tensors = [
      wire.tensorFromValues('h', 'float16', [2, 2], [0.5, -0, 65504, -1e-7]),
      wire.tensorFromValues('f', 'float32', [3], [1.5, -2, 3.25]),
      wire.tensorFromValues('i', 'int64', [2], [-(2n ** 63n), 2n ** 63n - 1n]),
    ];
    const frame = wire.makeFrame({
      type: wire.FrameType.FORWARD, session: SESSION, step: wire.MAX_STEP,
      flags: wire.FrameFlags.PREFILL | wire.FrameFlags.REPLAY, meta: { n: 1 }, tensors,
    });
    const decoded = wire.decodeFrame(wire.encodeFrame(frame));
    assert.deepEqual(decoded.tensors.map(wire.tensorValues), tensors.map(wire.tensorValues));
    assert.equal(decoded.step, wire.MAX_STEP);
    assert.equal(decoded.flags, wire.ALL_FLAGS);
    assert.deepEqual(wire.encodeFrame(decoded), wire.encodeFrame(frame));
  });

  test('ERROR frames become the typed RemoteError of their code', () => {
    const frame = wire.decodeFrame(wire.encodeFrame(wire.errorFrame(SESSION, 3, wire.ErrorCode.OVERLOADED, 'busy')));
    assert.throws(() => wire.raiseForError(frame), (e) => e instanceof wire.OverloadedError && e.code === 'overloaded');
    const unknown = wire.errorFrame(SESSION, 3, 'newer_code', 'x'.repeat(5000));
    assert.equal(new TextEncoder().encode(String(unknown.meta.message)).length, wire.MAX_ERROR_MESSAGE_BYTES);
    assert.throws(() => wire.raiseForError(unknown), (e) => e instanceof wire.RemoteError && e.constructor === wire.RemoteError && e.code === 'newer_code');
  });

  test('float16 rounds to nearest even and refuses overflow, as struct.pack("<e")', () => {
    assert.equal(wire.numberToFloat16Bits(1 + 2 ** -11), 0x3c00); // a tie: to even
    assert.equal(wire.numberToFloat16Bits(1 + 3 * 2 ** -11), 0x3c02);
    assert.equal(wire.numberToFloat16Bits(2 ** -25), 0); // a tie with zero
    assert.throws(() => wire.numberToFloat16Bits(65520), RangeError);
    assert.equal(wire.float16BitsToNumber(0x7bff), 65504);
  });
});

describe('the Reassembler', () => {
  test('refuses a chunk that disagrees with its message and keeps the others', () => {
    const r = new wire.Reassembler({ maxPartial: 2 });
    const a = wire.chunkMessage(1, new Uint8Array(30), 27);
    const b = wire.chunkMessage(2, new Uint8Array(30), 27);
    assert.equal(r.feed(a[0], 0), null);
    assert.equal(r.feed(b[0], 0), null);
    assert.throws(() => r.feed(a[0], 0), (e) => e instanceof wire.ChunkError && e.code === 'bad_frame');
    assert.equal(r.size, 1); // message 1 is dropped, message 2 kept
    assert.equal(r.feed(a[1], 0), null);
    assert.throws(() => r.feed(wire.chunkMessage(3, new Uint8Array(30), 27)[0], 0), wire.LimitExceededError);
    assert.equal(r.feed(b[1], 0)?.length, 30);
    assert.deepEqual(r.expire(100), [1]); // the second message 1, still partial
  });

  test('expires partial messages on the clock it is given', () => {
    const r = new wire.Reassembler({ timeoutS: 5 });
    r.feed(wire.chunkMessage(9, new Uint8Array(30), 27)[0], 10);
    assert.deepEqual(r.expire(15), []);
    assert.deepEqual(r.expire(15.5), [9]);
    assert.equal(r.bufferedBytes, 0);
  });
});

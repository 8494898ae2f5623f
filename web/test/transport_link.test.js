// @ts-check
/**
 * `BrowserLink` (web/src/transport/link.js) over an in-memory data channel pair, the way aiortc's tests
 * pair transports: chunking and reassembly of big frames, backpressure on `bufferedAmount`, frames that
 * never interleave, malformed input answered with ERROR, a lost chunk, ping/pong, and a closed channel.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ErrorCode, FrameType, chunkMessage, makeFrame } from '../src/protocol/wire.js';
import { LinkClosedError, LinkTimeoutError } from '../src/transport/errors.js';
import { BrowserLink } from '../src/transport/link.js';
import { FakePeerConnection, channelPair } from './fake_rtc.js';

const quiet = { info() {}, warn() {} };

/**
 * Two open links joined by a channel pair; frames each receives are collected.
 * @param {object} [options]
 * @param {{[key: string]: unknown}} [options.config]
 * @param {boolean} [options.manual]  deliver a's chunks only on `a.channel.flush()`
 */
async function linkPair({ config = {}, manual = false } = {}) {
  const full = {
    chunkSize: 1024,
    highWaterBytes: 8 * 1024,
    lowWaterBytes: 2 * 1024,
    maxMessageBytes: 16 * 1024 * 1024,
    reassemblyPartial: 8,
    reassemblyTimeoutS: 30,
    connectTimeoutMs: 1_000,
    log: quiet,
    ...config,
  };
  const [aChannel, bChannel] = channelPair({ manual });
  /** @type {{a: import('../src/protocol/wire.js').Frame[], b: import('../src/protocol/wire.js').Frame[]}} */
  const got = { a: [], b: [] };
  const closed = [];
  const make = (/** @type {'a' | 'b'} */ side) =>
    new BrowserLink(side === 'a' ? 'b'.repeat(64) : 'a'.repeat(64), `L${side}`, /** @type {any} */ (new FakePeerConnection()), /** @type {any} */ (full), (_link, frame) => got[side].push(frame), (link) => closed.push(link.name));
  const a = make('a');
  const b = make('b');
  a.adoptChannel(/** @type {any} */ (aChannel));
  /** @type {FakePeerConnection} */ (/** @type {unknown} */ (b.pc)).deliverChannel(bChannel);
  aChannel.open();
  bChannel.open();
  await Promise.all([a.waitOpen(), b.waitOpen()]);
  return { a, b, aChannel, bChannel, got, closed };
}

/** @param {number} n  a RESULT frame holding n float32 values */
const bigFrame = (n, step = 1) =>
  makeFrame({
    type: FrameType.RESULT,
    session: new Uint8Array(16).fill(3),
    step,
    tensors: [{ name: 'hidden_states', dtype: 'float32', shape: [1, 1, n], data: Float32Array.from({ length: n }, (_, i) => i * 0.5) }],
  });

/** Resolve once `check()` is true (polled on the event loop), or fail after `ms`. */
async function until(check, ms = 2_000) {
  const deadline = Date.now() + ms;
  while (!check()) {
    assert.ok(Date.now() < deadline, 'timed out waiting for a condition');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('a frame bigger than many chunks arrives whole, and both links count it', async () => {
  const { a, b, got } = await linkPair();
  const size = await a.send(bigFrame(20_000)); // 80 KB of tensor: ~80 chunks of 1 KiB
  assert.ok(size > 80_000);
  await until(() => got.b.length === 1);
  const [frame] = got.b;
  assert.equal(frame.type, FrameType.RESULT);
  assert.equal(frame.step, 1);
  const raw = /** @type {Uint8Array} */ (frame.tensors[0].data); // little-endian bytes
  const data = new Float32Array(raw.slice().buffer);
  assert.equal(data.length, 20_000);
  assert.equal(data[19_999], 19_999 * 0.5);
  assert.equal(a.stats.framesSent, 1);
  assert.equal(a.stats.bytesSent, size);
  assert.equal(b.stats.framesReceived, 1);
  assert.equal(b.stats.bytesReceived, size);
});

test('the sender waits on bufferedamountlow: bufferedAmount stays under the high water mark', async () => {
  const { a, aChannel, got } = await linkPair({ manual: true });
  let sent = false;
  const sending = a.send(bigFrame(10_000)).then(() => {
    sent = true;
  });
  await until(() => aChannel.queue.length > 0);
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
  assert.equal(sent, false, 'a 40 KB frame cannot be queued under an 8 KiB high water mark at once');
  assert.ok(aChannel.bufferedAmount <= 8 * 1024, `bufferedAmount ${aChannel.bufferedAmount}`);
  while (!sent) {
    aChannel.flush();
    await new Promise((resolve) => setImmediate(resolve));
  }
  await sending;
  aChannel.flush();
  await until(() => got.b.length === 1);
  assert.ok(aChannel.maxBuffered <= 8 * 1024, `max bufferedAmount ${aChannel.maxBuffered}`);
  assert.equal(aChannel.bufferedAmountLowThreshold, 2 * 1024);
});

test('frames sent at once are never interleaved: each arrives whole, in order', async () => {
  const { a, got } = await linkPair({ config: { highWaterBytes: 4 * 1024, lowWaterBytes: 1024 } });
  await Promise.all([1, 2, 3].map((step) => a.send(bigFrame(3_000 * step, step))));
  await until(() => got.b.length === 3);
  assert.deepEqual(
    got.b.map((f) => [f.step, f.tensors[0].shape[2]]),
    [
      [1, 3_000],
      [2, 6_000],
      [3, 9_000],
    ],
  );
});

test('malformed input is answered with ERROR and the link stays open', async () => {
  const { a, b, bChannel, got } = await linkPair();
  bChannel.send('a text message'); // chunks are binary
  bChannel.send(new Uint8Array([1, 2, 3])); // shorter than a chunk header
  bChannel.send(chunkMessage(7, new Uint8Array(64).fill(9), 1024)[0]); // a whole message that is no frame
  await until(() => got.b.length === 3);
  assert.deepEqual(
    got.b.map((f) => [f.type, f.meta.code]),
    [
      [FrameType.ERROR, ErrorCode.BAD_FRAME],
      [FrameType.ERROR, ErrorCode.BAD_FRAME],
      [FrameType.ERROR, ErrorCode.BAD_FRAME],
    ],
  );
  assert.equal(a.stats.badFrames, 3);
  assert.equal(a.state, 'open');
  await b.send(bigFrame(10));
  await until(() => got.a.length === 1);
  assert.equal(got.a[0].type, FrameType.RESULT);
});

test('a lost chunk loses only its frame; the next frame arrives', async () => {
  const { a, aChannel, got } = await linkPair();
  aChannel.toDrop = 1; // the first chunk of the next frame never arrives
  await a.send(bigFrame(2_000, 1));
  await a.send(bigFrame(10, 2));
  await until(() => got.b.length === 1);
  assert.equal(got.b[0].step, 2);
});

test('ping resolves with the round trip; it fails on a closed link and on a silent one', async () => {
  const { a, bChannel } = await linkPair();
  const rtt = await a.ping(1_000);
  assert.ok(rtt >= 0 && a.rttMs !== null);
  // A remote that takes chunks but never answers: no PONG in time.
  bChannel.dispatchEvent = () => true;
  await assert.rejects(a.ping(50), LinkTimeoutError);
  const pending = a.ping(5_000);
  a.close('test over');
  await assert.rejects(pending, LinkClosedError);
  await assert.rejects(a.ping(50), LinkClosedError);
});

test('a closed channel closes the link: waiting and later sends fail with LinkClosedError', async () => {
  const { a, b, aChannel, closed } = await linkPair({ manual: true });
  const waiting = a.send(bigFrame(10_000)); // stalls on backpressure: nothing is delivered
  await until(() => aChannel.queue.length > 0);
  aChannel.close();
  await assert.rejects(waiting, LinkClosedError);
  await assert.rejects(a.send(bigFrame(10)), LinkClosedError);
  assert.equal(a.state, 'closed');
  assert.equal(b.state, 'closed');
  assert.equal(a.closeReason, 'data channel closed');
  assert.deepEqual(closed.sort(), [a.name, b.name].sort());
});

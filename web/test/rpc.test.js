// @ts-check
/**
 * RpcClient (src/client/rpc.js) over an in-memory fake link: answers are matched by (session, step),
 * remote ERROR frames become typed errors, missed pings mean the peer is gone (and every call on the
 * link fails with it), and a call that gets no answer times out while the peer still answers pings.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RequestTimeoutError, RpcClient } from '../src/client/rpc.js';
import { ErrorCode, FrameType, OverloadedError, errorFrame, makeFrame } from '../src/protocol/wire.js';
import { LinkClosedError, LinkTimeoutError } from '../src/transport/peer.js';

/** A link that records what is sent; the test answers through `rpc.deliver` and decides how pings go. */
class FakeLink {
  constructor() {
    this.remoteId = 'f'.repeat(64);
    /** @type {'open' | 'closed'} */
    this.state = 'open';
    this.closeReason = '';
    /** @type {import('../src/protocol/wire.js').FrameInit[]} */
    this.sent = [];
    /** @type {'pong' | 'timeout' | 'closed'} */
    this.pings = 'pong';
    this.pingCount = 0;
    /** @type {(frame: import('../src/protocol/wire.js').FrameInit) => void} */
    this.onSend = () => {};
  }

  /** @param {import('../src/protocol/wire.js').FrameInit} frame */
  async send(frame) {
    this.sent.push(frame);
    queueMicrotask(() => this.onSend(frame));
    return 100;
  }

  /** @param {number} _timeoutMs */
  async ping(_timeoutMs) {
    this.pingCount++;
    if (this.pings === 'timeout') throw new LinkTimeoutError('no pong');
    if (this.pings === 'closed') throw new LinkClosedError('the channel closed');
  }

  /** @param {string} reason */
  close(reason) {
    this.state = 'closed';
    this.closeReason = reason;
  }
}

/** @param {number} n */
const session = (n) => Uint8Array.from({ length: 16 }, () => n);
/** @param {Uint8Array} s @param {number} step */
const result = (s, step) => makeFrame({ type: FrameType.RESULT, session: s, step, meta: { ok: step } });

/** @param {FakeLink} link @param {import('../src/client/rpc.js').RpcOptions} [options] */
const rpcOver = (link, options = { probeEveryMs: 5, probeTimeoutMs: 5, probeMisses: 2 }) =>
  new RpcClient(/** @type {any} */ (link), options);

test('answers are matched to their calls by session and step, across sessions', async () => {
  const link = new FakeLink();
  const rpc = rpcOver(link);
  /** @type {import('../src/protocol/wire.js').FrameInit[]} */
  const held = [];
  link.onSend = (frame) => {
    held.push(frame);
    if (held.length === 2) {
      // answer in reverse order, plus one nobody asked for
      rpc.deliver(result(/** @type {Uint8Array} */ (held[1].session), 1));
      rpc.deliver(result(session(9), 0));
      rpc.deliver(result(/** @type {Uint8Array} */ (held[0].session), 0));
    }
  };
  let sentBytes = 0;
  const [a, b] = await Promise.all([
    rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 1000, (n) => (sentBytes += n)),
    rpc.call({ type: FrameType.FORWARD, session: session(2), step: 1 }, 1000),
  ]);
  assert.deepEqual([a.meta, b.meta], [{ ok: 0 }, { ok: 1 }]);
  assert.equal(rpc.droppedAnswers, 1);
  assert.equal(sentBytes, 100);
});

test('a remote ERROR frame throws its typed error', async () => {
  const link = new FakeLink();
  const rpc = rpcOver(link);
  link.onSend = (frame) => rpc.deliver(errorFrame(/** @type {Uint8Array} */ (frame.session), 3, ErrorCode.OVERLOADED, 'full'));
  await assert.rejects(rpc.call({ type: FrameType.OPEN, session: session(1), step: 3 }, 1000), OverloadedError);
  assert.ok(!rpc.closed);
});

test('missed pings mean the peer is gone: the call and every other call on the link fail', async () => {
  const link = new FakeLink();
  link.pings = 'timeout';
  const rpc = rpcOver(link);
  const first = rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 60_000);
  const second = rpc.call({ type: FrameType.FORWARD, session: session(2), step: 0 }, 60_000);
  await assert.rejects(first, (err) => err instanceof LinkClosedError && /missed 2 pings/.test(err.message));
  await assert.rejects(second, LinkClosedError);
  assert.equal(link.state, 'closed');
  assert.ok(rpc.closed);
  await assert.rejects(rpc.call({ type: FrameType.FORWARD, session: session(3), step: 0 }, 1000), LinkClosedError);
});

test('a ping that finds the channel closed fails the call at once', async () => {
  const link = new FakeLink();
  link.pings = 'closed';
  const rpc = rpcOver(link);
  await assert.rejects(rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 60_000), /the channel closed/);
  assert.equal(link.pingCount, 1);
});

test('no answer within the timeout is a RequestTimeoutError while pings still come back', async () => {
  const link = new FakeLink();
  const rpc = rpcOver(link);
  await assert.rejects(
    rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 40),
    (err) => err instanceof RequestTimeoutError && /did not answer FORWARD/.test(err.message),
  );
  assert.ok(link.pingCount >= 1);
  assert.ok(!rpc.closed, 'a slow peer that answers pings keeps its link');
});

test('a closed link refuses calls, and one step of a session waits at a time', async () => {
  const link = new FakeLink();
  const rpc = rpcOver(link);
  const waiting = rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 60_000);
  await assert.rejects(rpc.call({ type: FrameType.FORWARD, session: session(1), step: 0 }, 1000), /already waiting/);
  rpc.close();
  await assert.rejects(waiting, /closed locally/);
  assert.equal(link.state, 'closed');
  await assert.rejects(rpc.call({ type: FrameType.FORWARD, session: session(1), step: 1 }, 1000), LinkClosedError);
});

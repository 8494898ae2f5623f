// @ts-check
/**
 * Request/response over one link this side opened, the mirror of `python_peer/rpc.py`'s `RpcClient`.
 *
 * One session's requests are sequential (the client awaits each answer before the next step), so an
 * answer is matched to its request by `(session, step)`; many sessions share a link. The link's frames
 * reach `deliver()` (from the transport's `onFrame`); answers no request waits for are dropped.
 *
 * While a call waits, the link is pinged every `probeEveryMs`: a peer that died without closing its
 * connection (SIGKILL, power loss) misses `probeMisses` pings in a row and the call fails within a few
 * seconds, instead of the tens of seconds ICE takes; a live peer busy with a long prefill keeps
 * answering pings (they never wait for compute). `timeoutMs` bounds the whole call.
 */

import { FrameType, frameTypeName, raiseForError } from '../protocol/wire.js';
import { LinkClosedError, LinkTimeoutError } from '../transport/peer.js';
import { PROBE_EVERY_MS, PROBE_MISSES, PROBE_TIMEOUT_MS } from '../protocol/constants.js';

/** A peer did not answer a request in time (it may still answer pings). */
export class RequestTimeoutError extends LinkTimeoutError {}

/** @param {Uint8Array} bytes */
export const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

/**
 * @typedef {object} RpcOptions
 * @property {number} [probeEveryMs]
 * @property {number} [probeTimeoutMs]
 * @property {number} [probeMisses]
 */

/** Calls over one `BrowserLink` we opened. */
export class RpcClient {
  /** @type {Map<string, {resolve: (frame: import('../protocol/wire.js').Frame) => void, reject: (err: Error) => void}>} */
  #pending = new Map();
  /** @type {Error | null} */
  #failure = null;

  /**
   * @param {import('../transport/peer.js').BrowserLink} link
   * @param {RpcOptions} [options]
   */
  constructor(link, { probeEveryMs = PROBE_EVERY_MS, probeTimeoutMs = PROBE_TIMEOUT_MS, probeMisses = PROBE_MISSES } = {}) {
    this.link = link;
    this.probeEveryMs = probeEveryMs;
    this.probeTimeoutMs = probeTimeoutMs;
    this.probeMisses = probeMisses;
    this.droppedAnswers = 0;
  }

  get remoteId() {
    return this.link.remoteId;
  }

  /** The link failed or closed: no call can succeed any more. */
  get closed() {
    return this.#failure !== null || this.link.state === 'closed';
  }

  /**
   * A frame from the link (the transport's `onFrame`): the answer of a waiting call, or dropped.
   * @param {import('../protocol/wire.js').Frame} frame
   */
  deliver(frame) {
    const key = `${hex(frame.session)}:${frame.step}`;
    const waiting = this.#pending.get(key);
    if (waiting === undefined || (frame.type !== FrameType.RESULT && frame.type !== FrameType.ERROR)) {
      this.droppedAnswers++;
      if (this.droppedAnswers <= 10) {
        console.debug(`rpc: dropping unexpected ${frameTypeName(frame.type)} frame from ${this.remoteId.slice(0, 8)}`);
      }
      return;
    }
    this.#pending.delete(key);
    waiting.resolve(frame);
  }

  /**
   * Send `frame` and return its answer; a remote ERROR frame throws its typed RemoteError, a dead or
   * closed link LinkClosedError, no answer within `timeoutMs` RequestTimeoutError.
   * @param {import('../protocol/wire.js').FrameInit} frame  with `session` and `step`
   * @param {number} timeoutMs
   * @param {(bytes: number) => void} [onSent]  told the frame's encoded size once it is on the channel
   * @returns {Promise<import('../protocol/wire.js').Frame>}
   */
  async call(frame, timeoutMs, onSent) {
    if (this.#failure !== null) throw this.#closedError();
    if (this.link.state === 'closed') throw new LinkClosedError(`link to ${this.remoteId.slice(0, 16)} is closed: ${this.link.closeReason}`);
    const session = frame.session ?? new Uint8Array(16);
    const key = `${hex(session)}:${frame.step ?? 0}`;
    if (this.#pending.has(key)) throw new Error(`a request for session ${hex(session)} step ${frame.step} is already waiting`);
    /** @type {(frame: import('../protocol/wire.js').Frame) => void} */
    let resolve = () => {};
    /** @type {(err: Error) => void} */
    let reject = () => {};
    /** @type {Promise<import('../protocol/wire.js').Frame>} */
    const answer = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.#pending.set(key, { resolve, reject });
    try {
      const bytes = await this.link.send(frame);
      onSent?.(bytes);
      const reply = await this.#awaitAnswer(answer, timeoutMs, frame.type);
      raiseForError(reply);
      return reply;
    } finally {
      this.#pending.delete(key);
    }
  }

  /**
   * Wait for `answer`, probing the link with pings alongside; PROBE_MISSES misses in a row mean the
   * peer is gone, and every other call on this link fails with it.
   * @param {Promise<import('../protocol/wire.js').Frame>} answer
   * @param {number} timeoutMs
   * @param {number} type
   */
  async #awaitAnswer(answer, timeoutMs, type) {
    const deadline = performance.now() + timeoutMs;
    let misses = 0;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const sleep = (/** @type {number} */ ms) =>
      new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), ms);
      });
    try {
      for (;;) {
        const remaining = deadline - performance.now();
        if (remaining <= 0) {
          throw new RequestTimeoutError(
            `peer ${this.remoteId.slice(0, 16)} did not answer ${frameTypeName(type)} within ${(timeoutMs / 1000).toFixed(1)} s`,
          );
        }
        const first = await Promise.race([answer, sleep(Math.min(this.probeEveryMs, remaining))]);
        clearTimeout(timer);
        if (first !== null) return /** @type {import('../protocol/wire.js').Frame} */ (first);
        const ping = this.link.ping(this.probeTimeoutMs).then(
          () => /** @type {const} */ ('pong'),
          (/** @type {Error} */ err) => err,
        );
        const next = await Promise.race([answer, ping, sleep(Math.max(1, deadline - performance.now()))]);
        clearTimeout(timer);
        if (next === null) continue; // the deadline: reported at the top
        if (next === 'pong') {
          misses = 0;
          continue;
        }
        if (next instanceof Error) {
          if (next instanceof LinkClosedError && !(next instanceof LinkTimeoutError)) throw next;
          misses++;
          if (misses >= this.probeMisses) {
            const dead = new LinkClosedError(`peer ${this.remoteId.slice(0, 16)} missed ${misses} pings in a row: ${next.message}`);
            this.fail(dead); // every other call on this link fails now too, instead of probing again
            this.link.close(dead.message);
            throw dead;
          }
          continue;
        }
        return next;
      }
    } finally {
      clearTimeout(timer);
    }
  }

  #closedError() {
    const why = this.#failure?.message ?? 'closed';
    return new LinkClosedError(`link to ${this.remoteId.slice(0, 16)} failed: ${why}`);
  }

  /**
   * Fail every waiting call and every later one (the link closed or died).
   * @param {Error} error
   */
  fail(error) {
    if (this.#failure === null) this.#failure = error;
    const err = error instanceof LinkClosedError ? error : this.#closedError();
    for (const waiting of this.#pending.values()) waiting.reject(err);
    this.#pending.clear();
  }

  /** Close the link; waiting calls fail. */
  close() {
    this.fail(new LinkClosedError('the link was closed locally'));
    this.link.close('closed by the client');
  }
}

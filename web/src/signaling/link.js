// @ts-check
/**
 * One websocket to one signaling node (`Link`): the node's hello, the requests waiting for their
 * answers by id, and signals handed up as they come; plus the small async helpers the client uses.
 */

import { RemoteSignalingError, SignalClientError } from './messages.js';
import { isPlainObject } from '../protocol/values.js';

/** Requests one websocket may have waiting for their answers. */
export const MAX_PENDING = 256;
/** The largest message read from a node, in characters. */
export const MAX_REPLY_BYTES = 1024 * 1024;

/** @typedef {import('./messages.js').Logger} Logger */

/** The websocket a request went out on closed before the answer: retry on the next one. */
export class LinkLost extends Error {}

/** A settable flag whose `wait()` resolves while it is set. */
export class Flag {
  constructor() {
    this.isSet = false;
    /** @type {(() => void)[]} */
    this.waiters = [];
  }
  set() {
    this.isSet = true;
    for (const wake of this.waiters.splice(0)) wake();
  }
  clear() {
    this.isSet = false;
  }
  /** @returns {Promise<void>} */
  wait() {
    return this.isSet ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }
}

/**
 * @template T
 * @param {Promise<T>} promise
 * @param {number} ms
 * @param {() => Error} onTimeout
 * @returns {Promise<T>}
 */
export function withTimeout(promise, ms, onTimeout) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const expiry = new Promise((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), Math.max(0, ms));
  });
  return /** @type {Promise<T>} */ (Promise.race([promise, expiry])).finally(() => clearTimeout(timer));
}

/** One websocket to one node, with the requests waiting for their answers on it. */
export class Link {
  /**
   * @param {string} url
   * @param {WebSocket} ws
   * @param {(message: {[key: string]: unknown}) => void} onSignal
   * @param {Logger} log
   */
  constructor(url, ws, onSignal, log) {
    this.url = url;
    this.ws = ws;
    this.nodeId = '';
    this.nonce = '';
    /** how often to re-announce on this link (ms): the client's period, or sooner if the node's idle bound asks */
    this.renewMs = 0;
    /** @type {{[key: string]: unknown} | null} */
    this.hello = null;
    /** @type {Map<number, {resolve: (m: {[key: string]: unknown}) => void, reject: (e: Error) => void}>} */
    this.pending = new Map();
    this.closed = new Flag();
    this.helloSeen = new Flag();
    ws.onmessage = (event) => {
      if (typeof event.data !== 'string' || event.data.length > MAX_REPLY_BYTES) return;
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        log.warn(`${url} sent a message that is not JSON`);
        return;
      }
      if (!isPlainObject(message)) return;
      if (this.hello === null) {
        this.hello = message;
        this.helloSeen.set();
      } else if (message.type === 'signal') {
        onSignal(message);
      } else {
        const waiter = typeof message.id === 'number' ? this.pending.get(message.id) : undefined;
        if (waiter) waiter.resolve(message);
        else if (message.type === 'error') log.warn(`${url}: error ${message.code}: ${message.message}`);
      }
    };
    ws.onclose = () => this.lost();
    ws.onerror = () => this.lost();
  }

  /**
   * Send `message` under `id` and wait for the answer carrying the same id.
   * @param {{[key: string]: unknown}} message
   * @param {number} id
   * @param {number} timeoutMs
   * @returns {Promise<{[key: string]: unknown}>}
   */
  async request(message, id, timeoutMs) {
    if (this.closed.isSet) throw new LinkLost(this.url);
    if (this.pending.size >= MAX_PENDING) {
      throw new SignalClientError(`${MAX_PENDING} requests are already waiting on ${this.url}`);
    }
    /** @type {Promise<{[key: string]: unknown}>} */
    const answer = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    let reply;
    try {
      this.ws.send(JSON.stringify({ ...message, id }));
      reply = await withTimeout(answer, timeoutMs, () => new SignalClientError(`${message.type} timed out on ${this.url}`));
    } finally {
      this.pending.delete(id);
    }
    if (reply.type === 'error') {
      const code = typeof reply.code === 'string' ? reply.code : 'internal';
      throw new RemoteSignalingError(`${this.url}: ${reply.message}`, { code });
    }
    return reply;
  }

  lost() {
    this.closed.set();
    this.helloSeen.set();
    for (const waiter of this.pending.values()) waiter.reject(new LinkLost(this.url));
    this.pending.clear();
  }

  close() {
    this.lost();
    try {
      this.ws.close(1000);
    } catch {
      // already closed
    }
  }
}

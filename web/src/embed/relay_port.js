// @ts-check
/**
 * The relay's wire between the page and the embedded node's worker (./relay.js): one `MessagePort`,
 * messages `{t: <type>, ...}`, requests with a bounded number of pending replies, and the limits both
 * halves enforce. `Endpoint` is one end of the port: typed messages, requests answered with a value or
 * an error (name and message, mapped back to the transport's error classes), and a warning (never an
 * exception) for whatever arrives malformed, oversized or of an unknown type. No DOM.
 */

import { MAX_FRAME_BYTES, encodeFrame } from '../protocol/wire.js';
import { LinkClosedError, SignalPayloadError, TransportError, checkIceServers } from '../transport/peer.js';

/** Bumped when a message changes shape; both halves come from the same node, so they must agree. */
export const RELAY_VERSION = 1;

/**
 * @typedef {object} RelayLimits
 * @property {number} [maxPending]  requests of one type waiting on the other side
 * @property {number} [maxSendsPerLink]  frames a worker-side link may have in flight to the page
 * @property {number} [maxQueuedFrames]  frames the page has posted that the worker has not taken yet
 * @property {number} [maxQueuedBytes]  their bytes
 * @property {number} [maxMessageBytes]  a frame bigger than this is dropped
 * @property {number} [requestTimeoutMs]  a request the other side never answers fails after this
 * @property {number} [heartbeatMs]  the page pings the worker this often (RelayHost)
 * @property {number} [deadAfterMs]  the page declares a silent worker dead after this (RelayHost)
 */

export const RELAY_DEFAULTS = Object.freeze({
  maxPending: 64,
  maxSendsPerLink: 64,
  maxQueuedFrames: 256,
  maxQueuedBytes: 64 * 1024 * 1024,
  maxMessageBytes: MAX_FRAME_BYTES,
  requestTimeoutMs: 30_000,
  heartbeatMs: 2_000,
  deadAfterMs: 60_000,
});

/** Longest peer or link id a message may carry (peer ids are 64 hex digits, link ids at most 64 chars). */
export const MAX_ID_CHARS = 256;

/** Error classes a reply may name; anything else comes back as TransportError. */
const ERROR_CLASSES = /** @type {Record<string, new (message: string) => Error>} */ ({
  SignalPayloadError,
  LinkClosedError,
  TransportError,
});

/**
 * @typedef {{info: (...args: any[]) => void, warn: (...args: any[]) => void}} Log
 */

/**
 * @param {unknown} value
 * @returns {value is {[key: string]: unknown}}
 */
export function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** @param {unknown} value */
export const isHandle = (value) => Number.isInteger(value) && /** @type {number} */ (value) > 0;

/** @param {unknown} err */
export const describe = (err) => (err instanceof Error ? err.message || err.name : String(err));

/**
 * The bytes of `frame`, in an ArrayBuffer of their own (so it can be transferred).
 * @param {import('../protocol/wire.js').FrameInit | import('../protocol/wire.js').Frame} frame
 * @param {number} maxFrameBytes
 */
export function frameBuffer(frame, maxFrameBytes) {
  const bytes = encodeFrame(frame, { maxFrameBytes });
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  return /** @type {ArrayBuffer} */ (whole ? bytes.buffer : bytes.slice().buffer);
}

/**
 * One end of the relay's MessagePort: typed messages, requests with bounded pending replies, and a
 * warning (never an exception) for whatever arrives malformed.
 */
export class Endpoint {
  /** @type {Map<number, {resolve: (value: any) => void, reject: (err: Error) => void}>} */
  #pending = new Map();
  /** @type {Map<string, number>} pending requests by message type */
  #counts = new Map();
  #nextId = 1;
  #closed = false;

  /**
   * @param {MessagePort} port
   * @param {string} side  'page' or 'worker', for messages
   * @param {Record<string, (message: {[key: string]: unknown}) => void>} handlers
   * @param {Required<RelayLimits>} limits
   * @param {Log} log
   * @param {() => void} [onAny]  called for every message that arrives, well formed or not
   */
  constructor(port, side, handlers, limits, log, onAny = () => {}) {
    this.port = port;
    this.side = side;
    this.handlers = handlers;
    this.limits = limits;
    this.log = log;
    this.dropped = 0;
    port.onmessage = (event) => {
      onAny();
      this.#receive(event.data);
    };
    port.onmessageerror = () => {
      onAny();
      this.warn('a message could not be deserialized: dropped');
    };
  }

  /** @param {string} text */
  warn(text) {
    this.log.warn(`relay (${this.side}): ${text}`);
  }

  get closed() {
    return this.#closed;
  }

  /** @param {unknown} data */
  #receive(data) {
    if (this.#closed) return;
    if (!isPlainObject(data) || typeof data.t !== 'string') {
      this.dropped++;
      this.warn(`dropped a malformed message (${typeof data}): not {t: string, ...}`);
      return;
    }
    if (data.t === 'reply') {
      this.#settle(data);
      return;
    }
    const handler = Object.prototype.hasOwnProperty.call(this.handlers, data.t) ? this.handlers[data.t] : undefined;
    if (handler === undefined) {
      this.dropped++;
      this.warn(`dropped a message of unknown type ${JSON.stringify(data.t.slice(0, 40))}`);
      return;
    }
    try {
      handler(data);
    } catch (err) {
      this.dropped++;
      this.warn(`dropped a ${data.t} message: ${describe(err)}`);
    }
  }

  /** @param {{[key: string]: unknown}} data */
  #settle(data) {
    const id = /** @type {number} */ (data.id);
    const waiter = isHandle(id) ? this.#pending.get(id) : undefined;
    if (waiter === undefined) {
      this.warn(`dropped a reply to no pending request (${String(data.id).slice(0, 20)})`);
      return;
    }
    if (data.ok === true) {
      waiter.resolve(data.value);
    } else {
      const error = isPlainObject(data.error) ? data.error : {};
      const name = typeof error.name === 'string' ? error.name : 'TransportError';
      const message = typeof error.message === 'string' ? error.message.slice(0, 2048) : 'the other side failed';
      const Cls = Object.prototype.hasOwnProperty.call(ERROR_CLASSES, name) ? ERROR_CLASSES[name] : TransportError;
      waiter.reject(new Cls(message));
    }
  }

  /**
   * Post a message; `transfer` moves ArrayBuffers instead of copying them.
   * @param {{[key: string]: unknown, t: string}} message
   * @param {Transferable[]} [transfer]
   */
  post(message, transfer = []) {
    if (this.#closed) return false;
    this.port.postMessage(message, transfer);
    return true;
  }

  /**
   * A request: resolves with the other side's reply value, rejects with its error, with TransportError
   * when `limit` requests of its type are pending already, and after `requestTimeoutMs` with no answer.
   * @param {{[key: string]: unknown, t: string}} message
   * @param {Transferable[]} [transfer]
   * @param {number} [limit]  pending requests of this type allowed (sends are bounded per link instead)
   * @returns {Promise<any>}
   */
  request(message, transfer = [], limit = this.limits.maxPending) {
    if (this.#closed) return Promise.reject(new TransportError(`the relay is closed (${this.side} side)`));
    const type = message.t;
    const count = this.#counts.get(type) ?? 0;
    if (count >= limit) {
      return Promise.reject(new TransportError(`${count} ${type} requests already wait on the other side of the relay; refusing one more`));
    }
    this.#counts.set(type, count + 1);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        this.#pending.delete(id);
        this.#counts.set(type, (this.#counts.get(type) ?? 1) - 1);
      };
      const timer = setTimeout(() => {
        done();
        reject(new TransportError(`${type} got no answer across the relay within ${this.limits.requestTimeoutMs} ms`));
      }, this.limits.requestTimeoutMs);
      this.#pending.set(id, {
        resolve: (value) => {
          done();
          resolve(value);
        },
        reject: (err) => {
          done();
          reject(err);
        },
      });
      this.port.postMessage({ ...message, id }, transfer);
    });
  }

  /**
   * Answer a request with the outcome of `work`.
   * @param {{[key: string]: unknown}} message
   * @param {() => Promise<unknown>} work
   */
  answer(message, work) {
    const id = message.id;
    if (!isHandle(id)) throw new TypeError(`${message.t} carries no request id`);
    work().then(
      (value) => this.post({ t: 'reply', id, ok: true, value }),
      (err) => {
        const name = err instanceof Error ? err.name : 'Error';
        this.post({ t: 'reply', id, ok: false, error: { name, message: describe(err) } });
      },
    );
  }

  /** Fail every pending request with `reason` and stop listening. @param {string} reason */
  close(reason) {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of [...this.#pending.values()]) waiter.reject(new TransportError(`the relay closed: ${reason}`));
    this.port.onmessage = null;
    this.port.onmessageerror = null;
  }
}

/**
 * @param {RelayLimits} [limits]
 * @returns {Required<RelayLimits>}
 */
export function checkedLimits(limits = {}) {
  const merged = { ...RELAY_DEFAULTS, ...limits };
  for (const [key, value] of Object.entries(merged)) {
    if (!Number.isInteger(value) || value < 1) throw new RangeError(`relay limit ${key} must be a positive integer, not ${value}`);
  }
  return merged;
}

/**
 * The part of a TransportConfig that crosses to the page: numbers, strings, null, string arrays and
 * the checked `iceServers` (no `log`, no functions). The page's BrowserTransport checks them again.
 * @param {{[key: string]: unknown}} config
 */
export function cloneableConfig(config) {
  /** @type {{[key: string]: unknown}} */
  const out = {};
  for (const [key, value] of Object.entries(config)) {
    if (key === 'iceServers') {
      out.iceServers = checkIceServers(value);
      continue;
    }
    const plain =
      value === null ||
      typeof value === 'number' ||
      typeof value === 'string' ||
      typeof value === 'boolean' ||
      (Array.isArray(value) && value.every((v) => typeof v === 'string'));
    if (plain) out[key] = value;
  }
  return out;
}

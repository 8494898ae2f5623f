// @ts-check
/**
 * The transport relay of the embedded node (docs/browser.md, "embed.js"): Chromium gives Web Workers
 * no `RTCPeerConnection`, so the node runs in a worker and its WebRTC links live on the page.
 *
 * - `RelayTransport` (worker side) has the interface of `BrowserTransport` (web/src/transport/peer.js):
 *   `new RelayTransport(port, {sendSignal, onFrame, onLinkOpen, onLinkClosed, config})`,
 *   `handleSignal(signal)`, `links` (each with `remoteId`, `linkId`, `state`, `send(frame)`,
 *   `close(reason)`, `waitOpen()`), `close()`. A `BrowserNode` takes it through its `createTransport`.
 * - The worker's `hello` carries its transport config (`cloneableConfig`): the page configuration's ICE
 *   settings (`iceServers`, `remoteAddresses`, `localAddress`, from `transportConfigFor` in the worker's
 *   BrowserNode), which the page's `BrowserTransport` checks again; a malformed one is dropped.
 * - `RelayHost` (page side) owns the real `BrowserTransport`, answers offers, and relays: signals the
 *   worker verified go to `handleSignal`, answers go back through the worker's signal client, frames
 *   cross in both directions as encoded bytes whose ArrayBuffer is transferred (one copy, and every
 *   frame is validated again by `decodeFrame` on the receiving side).
 *
 * The two halves talk over one `MessagePort` (a `MessageChannel` the page makes; port2 goes to the
 * worker). Every message is `{t: <type>, ...}`; anything malformed, oversized or of an unknown type is
 * dropped with a warning, and a request that fails is answered with the error's name and message.
 *
 * Bounds: at most `maxPending` requests of each type wait for the other side (handle-signal from the
 * worker, send-signal from the page), at most `maxSendsPerLink` sends per link wait for the page, and at most `maxQueuedFrames`
 * frames / `maxQueuedBytes` bytes wait for the worker to take them; past the last bound a request frame
 * is answered on its link with ERROR `overloaded` (the client routes around this peer), never queued.
 *
 * A dead worker: while a transport exists, the host pings every `heartbeatMs`; when nothing has been
 * heard from the worker for `deadAfterMs` it closes every link (so clients fail over at once), refuses
 * everything after, and calls `onDead(reason)`. Nothing here touches the DOM.
 */

import { ErrorCode, FrameType, MAX_FRAME_BYTES, decodeFrame, encodeFrame, errorFrame } from '../protocol/wire.js';
import { BrowserTransport, LinkClosedError, SignalPayloadError, TransportError, checkIceServers } from '../transport/peer.js';

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
const MAX_ID_CHARS = 256;

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
function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** @param {unknown} value */
const isHandle = (value) => Number.isInteger(value) && /** @type {number} */ (value) > 0;

/** @param {unknown} err */
const describe = (err) => (err instanceof Error ? err.message || err.name : String(err));

/**
 * The bytes of `frame`, in an ArrayBuffer of their own (so it can be transferred).
 * @param {import('../protocol/wire.js').FrameInit | import('../protocol/wire.js').Frame} frame
 * @param {number} maxFrameBytes
 */
function frameBuffer(frame, maxFrameBytes) {
  const bytes = encodeFrame(frame, { maxFrameBytes });
  const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
  return /** @type {ArrayBuffer} */ (whole ? bytes.buffer : bytes.slice().buffer);
}

/**
 * One end of the relay's MessagePort: typed messages, requests with bounded pending replies, and a
 * warning (never an exception) for whatever arrives malformed.
 */
class Endpoint {
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
function checkedLimits(limits = {}) {
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
function cloneableConfig(config) {
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

// --- the worker side -------------------------------------------------------------------------------

/** A link the page holds, as the worker sees it: frames out go through the page, frames in come from it. */
export class RelayLink {
  /** @type {Set<{resolve: () => void, reject: (err: Error) => void}>} */
  #inFlight = new Set();
  /** @type {(() => void)[]} */
  #openWaiters = [];

  /**
   * @param {RelayTransport} transport
   * @param {number} handle  the page's number for this link
   * @param {string} remoteId
   * @param {string} linkId
   */
  constructor(transport, handle, remoteId, linkId) {
    this.transport = transport;
    this.handle = handle;
    this.remoteId = remoteId;
    this.linkId = linkId;
    /** @type {'connecting' | 'open' | 'closed'} */
    this.state = 'connecting';
    /** @type {string | null} */
    this.closeReason = null;
    this.name = `relayed link ${linkId} to ${remoteId.slice(0, 8)}`;
    this.stats = { framesSent: 0, bytesSent: 0, framesReceived: 0, bytesReceived: 0, badFrames: 0 };
  }

  /**
   * Send one frame through the page; resolves once the page's link has queued it on its channel.
   * Rejects with LinkClosedError when the link is closed, TransportError past `maxSendsPerLink`.
   * @param {import('../protocol/wire.js').FrameInit | import('../protocol/wire.js').Frame} frame
   * @returns {Promise<void>}
   */
  send(frame) {
    if (this.state === 'closed') return Promise.reject(new LinkClosedError(`${this.name} is closed: ${this.closeReason}`));
    const { limits } = this.transport;
    if (this.#inFlight.size >= limits.maxSendsPerLink) {
      return Promise.reject(new TransportError(`${this.name}: ${this.#inFlight.size} frames already wait on the page`));
    }
    let buffer;
    try {
      buffer = frameBuffer(frame, limits.maxMessageBytes);
    } catch (err) {
      return Promise.reject(err);
    }
    const bytes = buffer.byteLength;
    return new Promise((resolve, reject) => {
      const waiter = { resolve: () => resolve(undefined), reject };
      this.#inFlight.add(waiter);
      this.transport.endpoint.request({ t: 'send', link: this.handle, bytes: buffer }, [buffer], Infinity).then(
        () => {
          this.#inFlight.delete(waiter);
          this.stats.framesSent++;
          this.stats.bytesSent += bytes;
          waiter.resolve();
        },
        (err) => {
          this.#inFlight.delete(waiter);
          waiter.reject(err);
        },
      );
    });
  }

  /** Resolve once the page's link is open; reject if it closes first or after `timeoutMs`. */
  waitOpen(timeoutMs = 20_000) {
    if (this.state === 'open') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(new LinkClosedError(`${this.name} is closed: ${this.closeReason}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new LinkClosedError(`${this.name} did not open within ${timeoutMs} ms`)), timeoutMs);
      this.#openWaiters.push(() => {
        clearTimeout(timer);
        if (this.state === 'open') resolve(undefined);
        else reject(new LinkClosedError(`${this.name} is closed: ${this.closeReason}`));
      });
    });
  }

  /** The page says the link is open. */
  opened() {
    if (this.state !== 'connecting') return false;
    this.state = 'open';
    for (const wake of this.#openWaiters.splice(0)) wake();
    return true;
  }

  /**
   * Close the link here and on the page; pending sends fail.
   * @param {string} [reason]
   */
  close(reason = 'closed by the worker') {
    if (!this.closedHere(reason)) return;
    this.transport.endpoint.post({ t: 'close-link', link: this.handle, reason });
  }

  /**
   * Mark closed without telling the page (it told us); false when already closed.
   * @param {string} reason
   */
  closedHere(reason) {
    if (this.state === 'closed') return false;
    this.state = 'closed';
    this.closeReason = reason;
    for (const wake of this.#openWaiters.splice(0)) wake();
    for (const waiter of this.#inFlight) waiter.reject(new LinkClosedError(`${this.name} is closed: ${reason}`));
    this.#inFlight.clear();
    this.transport.forget(this);
    return true;
  }
}

/**
 * The worker's stand-in for `BrowserTransport`: same constructor hooks, same methods; the page's
 * `RelayHost` on the other end of `port` does the WebRTC.
 */
export class RelayTransport {
  /** @type {Map<number, RelayLink>} */
  #links = new Map();
  /** @type {Set<number>} */
  #closedHandles = new Set();
  #closed = false;

  /**
   * @param {MessagePort} port  the worker's end of the page's MessageChannel
   * @param {object} hooks  as BrowserTransport's
   * @param {(peerId: string, payload: {[key: string]: unknown}) => Promise<void>} hooks.sendSignal
   * @param {(link: RelayLink, frame: import('../protocol/wire.js').Frame) => void} hooks.onFrame
   * @param {(link: RelayLink) => void} [hooks.onLinkClosed]
   * @param {(link: RelayLink) => void} [hooks.onLinkOpen]
   * @param {import('../transport/peer.js').TransportConfig} [hooks.config]
   * @param {RelayLimits & {log?: Log}} [options]
   */
  constructor(port, { sendSignal, onFrame, onLinkClosed, onLinkOpen, config = {} }, options = {}) {
    const { log, ...limits } = options;
    this.log = log ?? config.log ?? console;
    this.limits = checkedLimits(limits);
    this.sendSignal = sendSignal;
    this.onFrame = onFrame;
    this.onLinkClosed = onLinkClosed ?? (() => {});
    this.onLinkOpen = onLinkOpen ?? (() => {});
    this.endpoint = new Endpoint(
      port,
      'worker',
      {
        'send-signal': (m) => this.#onSendSignal(m),
        'link-open': (m) => this.#onLinkOpen(m),
        'link-closed': (m) => this.#onLinkClosed(m),
        frame: (m) => this.#onFrame(m),
        ping: (m) => this.endpoint.post({ t: 'pong', n: m.n }),
        closed: (m) => this.#onHostClosed(String(m.reason).slice(0, 200)),
      },
      this.limits,
      this.log,
    );
    this.endpoint.post({ t: 'hello', version: RELAY_VERSION, config: cloneableConfig(config) });
  }

  /** The links open or opening now. */
  get links() {
    return [...this.#links.values()];
  }

  /**
   * Have the page answer one verified signal (an offer); resolves with the new link.
   * @param {{sender: string, payload: {[key: string]: unknown}}} signal
   * @returns {Promise<RelayLink>}
   */
  async handleSignal({ sender, payload }) {
    if (this.#closed) throw new TransportError('the transport is closed');
    if (typeof sender !== 'string' || !isPlainObject(payload)) {
      throw new SignalPayloadError('a signal needs a sender string and a payload object');
    }
    const value = await this.endpoint.request({ t: 'handle-signal', sender, payload });
    if (!isPlainObject(value)) throw new TransportError('the page answered handle-signal without a link');
    const link = this.#linkFor(value);
    if (link === null) throw new TransportError('the page answered handle-signal with a malformed link');
    return link;
  }

  /**
   * The worker-side link for a page link handle (from a handle-signal reply or link-open), made on
   * first mention; null for a malformed one or for a link this side already saw closed.
   * @param {{[key: string]: unknown}} m
   */
  #linkFor(m) {
    const { link: handle, remoteId, linkId } = m;
    if (!isHandle(handle) || typeof remoteId !== 'string' || typeof linkId !== 'string') return null;
    if (remoteId.length > MAX_ID_CHARS || linkId.length > MAX_ID_CHARS) return null;
    const known = this.#links.get(/** @type {number} */ (handle));
    if (known !== undefined) return known;
    if (this.#closed || this.#closedHandles.has(/** @type {number} */ (handle))) return null;
    const link = new RelayLink(this, /** @type {number} */ (handle), remoteId, linkId);
    this.#links.set(link.handle, link);
    return link;
  }

  /**
   * Called by a link as it closes: drop it, remember its handle (so a late message for it is ignored,
   * the last 4096), tell the node.
   * @param {RelayLink} link
   */
  forget(link) {
    if (this.#links.get(link.handle) === link) this.#links.delete(link.handle);
    this.#closedHandles.add(link.handle);
    if (this.#closedHandles.size > 4096) {
      const oldest = this.#closedHandles.values().next().value;
      if (oldest !== undefined) this.#closedHandles.delete(oldest);
    }
    this.onLinkClosed(link);
  }

  /** @param {{[key: string]: unknown}} m */
  #onSendSignal(m) {
    this.endpoint.answer(m, async () => {
      const { peerId, payload } = m;
      if (typeof peerId !== 'string' || !isPlainObject(payload)) throw new SignalPayloadError('send-signal needs a peerId and a payload object');
      await this.sendSignal(peerId, payload);
      return null;
    });
  }

  /** @param {{[key: string]: unknown}} m */
  #onLinkOpen(m) {
    const link = this.#linkFor(m);
    if (link !== null && link.opened()) this.onLinkOpen(link);
  }

  /** @param {{[key: string]: unknown}} m */
  #onLinkClosed(m) {
    const handle = /** @type {number} */ (m.link);
    const link = isHandle(handle) ? this.#links.get(handle) : undefined;
    if (link !== undefined) link.closedHere(typeof m.reason === 'string' ? m.reason.slice(0, 200) : 'closed by the page');
  }

  /** @param {{[key: string]: unknown}} m */
  #onFrame(m) {
    const { bytes } = m;
    const size = bytes instanceof ArrayBuffer ? bytes.byteLength : 0;
    this.endpoint.post({ t: 'ack', bytes: size }); // taken: the page may queue more
    const handle = /** @type {number} */ (m.link);
    const link = isHandle(handle) ? this.#links.get(handle) : undefined;
    if (link === undefined) {
      if (this.#closedHandles.has(handle)) return; // a frame that raced the link's close
      throw new TypeError(`frame for link ${String(m.link).slice(0, 20)}, which the page never opened`);
    }
    if (!(bytes instanceof ArrayBuffer) || size > this.limits.maxMessageBytes) {
      link.stats.badFrames++;
      throw new TypeError(`frame on ${link.name} is not an ArrayBuffer of at most ${this.limits.maxMessageBytes} bytes`);
    }
    let frame;
    try {
      frame = decodeFrame(bytes, { maxFrameBytes: this.limits.maxMessageBytes });
    } catch (err) {
      link.stats.badFrames++;
      throw new TypeError(`frame on ${link.name} does not decode: ${describe(err)}`);
    }
    link.stats.framesReceived++;
    link.stats.bytesReceived += size;
    this.onFrame(link, frame);
  }

  /** @param {string} reason */
  #onHostClosed(reason) {
    this.#shutdown(`the page closed the relay: ${reason}`);
  }

  /** @param {string} reason */
  #shutdown(reason) {
    if (this.#closed) return;
    this.#closed = true;
    for (const link of [...this.#links.values()]) link.closedHere(reason);
    this.endpoint.close(reason);
  }

  /** Close every link (the page closes its RTCPeerConnections); later signals are refused. */
  close() {
    if (this.#closed) return;
    this.endpoint.post({ t: 'close' });
    this.#shutdown('transport closed');
  }
}

// --- the page side ---------------------------------------------------------------------------------

/**
 * The page's end: holds the real BrowserTransport (made when the worker's RelayTransport says hello)
 * and relays between it and the worker.
 */
export class RelayHost {
  /** @type {BrowserTransport | null} */
  #transport = null;
  /** @type {Map<number, import('../transport/peer.js').BrowserLink>} */
  #links = new Map();
  /** @type {WeakMap<object, number>} */
  #handles = new WeakMap();
  #nextHandle = 1;
  #queuedFrames = 0;
  #queuedBytes = 0;
  #lastHeard = 0;
  /** @type {ReturnType<typeof setInterval> | null} */
  #heartbeat = null;
  #pingSeq = 0;
  /** @type {string | null} */
  #deadReason = null;

  /**
   * @param {MessagePort} port  the page's end of the MessageChannel; the other end goes to the worker
   * @param {RelayLimits & {
   *   heartbeatMs?: number, deadAfterMs?: number, log?: Log,
   *   onDead?: (reason: string) => void,
   *   transportConfig?: import('../transport/peer.js').TransportConfig,
   * }} [options]
   */
  constructor(port, options = {}) {
    const { heartbeatMs, deadAfterMs, log, onDead, transportConfig, ...limits } = options;
    this.log = log ?? console;
    this.limits = checkedLimits(limits);
    const timing = checkedLimits({
      heartbeatMs: heartbeatMs ?? RELAY_DEFAULTS.heartbeatMs,
      deadAfterMs: deadAfterMs ?? RELAY_DEFAULTS.deadAfterMs,
    });
    this.heartbeatMs = timing.heartbeatMs;
    this.deadAfterMs = timing.deadAfterMs;
    this.onDead = onDead ?? (() => {});
    this.transportConfig = transportConfig ?? {};
    this.stats = { framesIn: 0, framesOut: 0, overloaded: 0 };
    this.endpoint = new Endpoint(
      port,
      'page',
      {
        hello: (m) => this.#onHello(m),
        'handle-signal': (m) => this.#onHandleSignal(m),
        send: (m) => this.#onSend(m),
        'close-link': (m) => this.#onCloseLink(m),
        close: () => this.#closeTransport(),
        ack: (m) => this.#onAck(m),
        pong: () => {},
      },
      this.limits,
      this.log,
      () => {
        this.#lastHeard = performance.now(); // every message from the worker proves it alive
      },
    );
  }

  /** The page's links (open or opening). */
  get links() {
    return this.#transport?.links ?? [];
  }

  /** Why the worker was declared dead, or null. */
  get deadReason() {
    return this.#deadReason;
  }

  /** Frames posted to the worker and not taken yet. */
  get queued() {
    return { frames: this.#queuedFrames, bytes: this.#queuedBytes };
  }

  /** @param {{[key: string]: unknown}} m */
  #onHello(m) {
    if (m.version !== RELAY_VERSION) {
      throw new TypeError(`the worker speaks relay version ${String(m.version).slice(0, 20)}, this page ${RELAY_VERSION}`);
    }
    this.#closeTransport();
    const fromWorker = isPlainObject(m.config) ? m.config : {};
    const config = { ...fromWorker, ...this.transportConfig, log: this.log };
    this.#transport = new BrowserTransport({
      config,
      sendSignal: (peerId, payload) => this.endpoint.request({ t: 'send-signal', peerId, payload }),
      onFrame: (link, frame) => this.#toWorker(link, frame),
      onLinkOpen: (link) => {
        const handle = this.#handles.get(link);
        if (handle !== undefined) this.endpoint.post({ t: 'link-open', link: handle, remoteId: link.remoteId, linkId: link.linkId });
      },
      onLinkClosed: (link) => {
        const handle = this.#handles.get(link);
        if (handle === undefined) return;
        this.#links.delete(handle);
        this.endpoint.post({ t: 'link-closed', link: handle, remoteId: link.remoteId, linkId: link.linkId, reason: link.closeReason });
      },
    });
    this.#lastHeard = performance.now();
    if (this.#heartbeat === null) this.#heartbeat = setInterval(() => this.#beat(), this.heartbeatMs);
  }

  #beat() {
    if (this.#transport === null) return;
    const silent = performance.now() - this.#lastHeard;
    if (silent > this.deadAfterMs) {
      this.#die(`the node's worker has not answered for ${Math.round(silent / 1000)} s: it crashed or hangs`);
      return;
    }
    this.endpoint.post({ t: 'ping', n: ++this.#pingSeq });
  }

  /** @param {string} reason */
  #die(reason) {
    if (this.#deadReason !== null || this.endpoint.closed) return;
    this.#deadReason = reason;
    this.log.warn(`relay (page): ${reason}; closing every link`);
    this.close(reason);
    this.onDead(reason);
  }

  /** @param {import('../transport/peer.js').BrowserLink} link */
  #handleOf(link) {
    let handle = this.#handles.get(link);
    if (handle === undefined) {
      handle = this.#nextHandle++;
      this.#handles.set(link, handle);
      if (link.state !== 'closed') this.#links.set(handle, link);
    }
    return handle;
  }

  /** @param {{[key: string]: unknown}} m */
  #onHandleSignal(m) {
    this.endpoint.answer(m, async () => {
      const transport = this.#transport;
      if (transport === null) throw new TransportError('the page holds no transport (the worker never said hello)');
      const { sender, payload } = m;
      if (typeof sender !== 'string' || !isPlainObject(payload)) throw new SignalPayloadError('handle-signal needs a sender and a payload object');
      const link = await transport.handleSignal({ sender, payload });
      return { link: this.#handleOf(link), remoteId: link.remoteId, linkId: link.linkId };
    });
  }

  /**
   * A frame from a remote peer: to the worker, unless the worker is too far behind.
   * @param {import('../transport/peer.js').BrowserLink} link
   * @param {import('../protocol/wire.js').Frame} frame
   */
  #toWorker(link, frame) {
    const handle = this.#handleOf(link);
    const refuse = (/** @type {string} */ why) => {
      this.stats.overloaded++;
      this.log.warn(`relay (page): ${why}; answered ${link.name} with overloaded`);
      if (frame.type !== FrameType.ERROR && frame.type !== FrameType.RESULT) {
        link.send(errorFrame(frame.session, frame.step, ErrorCode.OVERLOADED, `this browser peer is busy: ${why}`)).catch(() => {});
      }
    };
    if (this.#deadReason !== null || this.endpoint.closed) {
      refuse('its worker is gone');
      return;
    }
    let buffer;
    try {
      buffer = frameBuffer(frame, this.limits.maxMessageBytes);
    } catch (err) {
      this.log.warn(`relay (page): a frame from ${link.name} does not re-encode, dropped: ${describe(err)}`);
      return;
    }
    if (this.#queuedFrames + 1 > this.limits.maxQueuedFrames || this.#queuedBytes + buffer.byteLength > this.limits.maxQueuedBytes) {
      refuse(`${this.#queuedFrames} frames (${this.#queuedBytes} bytes) already wait for the worker`);
      return;
    }
    this.#queuedFrames++;
    this.#queuedBytes += buffer.byteLength;
    this.stats.framesIn++;
    this.endpoint.post({ t: 'frame', link: handle, remoteId: link.remoteId, linkId: link.linkId, bytes: buffer }, [buffer]);
  }

  /** @param {{[key: string]: unknown}} m */
  #onAck(m) {
    const bytes = typeof m.bytes === 'number' && m.bytes >= 0 ? m.bytes : 0;
    this.#queuedFrames = Math.max(0, this.#queuedFrames - 1);
    this.#queuedBytes = Math.max(0, this.#queuedBytes - bytes);
  }

  /** @param {{[key: string]: unknown}} m */
  #onSend(m) {
    this.endpoint.answer(m, async () => {
      const { link: handle, bytes } = m;
      if (!(bytes instanceof ArrayBuffer)) throw new TransportError('send carries no ArrayBuffer');
      if (bytes.byteLength > this.limits.maxMessageBytes) {
        throw new TransportError(`a frame of ${bytes.byteLength} bytes is over the relay's limit of ${this.limits.maxMessageBytes}`);
      }
      const link = isHandle(handle) ? this.#links.get(/** @type {number} */ (handle)) : undefined;
      if (link === undefined) throw new LinkClosedError(`link ${String(handle).slice(0, 20)} is closed or unknown on the page`);
      const frame = decodeFrame(bytes, { maxFrameBytes: this.limits.maxMessageBytes });
      await link.send(frame);
      this.stats.framesOut++;
      return null;
    });
  }

  /** @param {{[key: string]: unknown}} m */
  #onCloseLink(m) {
    const handle = m.link;
    const link = isHandle(handle) ? this.#links.get(/** @type {number} */ (handle)) : undefined;
    if (link !== undefined) link.close(typeof m.reason === 'string' ? m.reason.slice(0, 200) : 'closed by the worker');
  }

  #closeTransport() {
    const transport = this.#transport;
    this.#transport = null;
    transport?.close();
    this.#links.clear();
    this.#queuedFrames = 0;
    this.#queuedBytes = 0;
  }

  /**
   * Close every link and stop relaying; the worker's RelayTransport hears `closed` (if it still runs).
   * @param {string} [reason]
   */
  close(reason = 'closed by the page') {
    if (this.#heartbeat !== null) clearInterval(this.#heartbeat);
    this.#heartbeat = null;
    this.#closeTransport();
    this.endpoint.post({ t: 'closed', reason });
    this.endpoint.close(reason);
  }
}

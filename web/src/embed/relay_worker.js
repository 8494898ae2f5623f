// @ts-check
/**
 * The worker's half of the relay (./relay.js): `RelayTransport` has the interface of `BrowserTransport`
 * (web/src/transport/peer.js) for a `BrowserNode` in a Web Worker, which has no RTCPeerConnection:
 * `new RelayTransport(port, {sendSignal, onFrame, onLinkOpen, onLinkClosed, config})`,
 * `handleSignal(signal)`, `links` (`RelayLink`s, each with `remoteId`, `linkId`, `state`, `send(frame)`,
 * `close(reason)`, `waitOpen()`), `close()`. Its `hello` carries the transport config's cloneable part
 * (the ICE settings) to the page. Frames arriving from the page are decoded again here; at most
 * `maxSendsPerLink` sends per link wait for the page. No DOM.
 */

import { decodeFrame } from '../protocol/wire.js';
import { LinkClosedError, SignalPayloadError, TransportError } from '../transport/peer.js';
import {
  Endpoint,
  MAX_ID_CHARS,
  RELAY_VERSION,
  checkedLimits,
  cloneableConfig,
  describe,
  frameBuffer,
  isHandle,
  isPlainObject,
} from './relay_port.js';

/** @typedef {import('./relay_port.js').RelayLimits} RelayLimits */
/** @typedef {import('./relay_port.js').Log} Log */

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
    this.log = log ?? /** @type {Log | undefined} */ (config.log) ?? console;
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

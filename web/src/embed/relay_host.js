// @ts-check
/**
 * The page's half of the relay (./relay.js): `RelayHost` owns the real `BrowserTransport` (made when the
 * worker's RelayTransport says hello, with the ICE settings it sent, checked again), answers offers the
 * worker verified, and relays frames both ways as transferred ArrayBuffers.
 *
 * Bounds: at most `maxQueuedFrames` frames / `maxQueuedBytes` bytes wait for the worker to take them
 * (it acks each); past them a request frame is answered on its link with ERROR `overloaded` (the client
 * routes around this peer), never queued. A dead worker: the host pings every `heartbeatMs`; when
 * nothing has been heard for `deadAfterMs` it closes every link (so clients fail over at once), refuses
 * everything after, and calls `onDead(reason)`. No DOM.
 */

import { ErrorCode, FrameType, decodeFrame, errorFrame } from '../protocol/wire.js';
import { BrowserTransport, LinkClosedError, SignalPayloadError, TransportError } from '../transport/peer.js';
import { Endpoint, RELAY_DEFAULTS, RELAY_VERSION, checkedLimits, describe, frameBuffer, isHandle, isPlainObject } from './relay_port.js';

/** @typedef {import('./relay_port.js').RelayLimits} RelayLimits */
/** @typedef {import('./relay_port.js').Log} Log */

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

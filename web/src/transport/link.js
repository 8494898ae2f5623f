// @ts-check
/**
 * One WebRTC link (`BrowserLink`): an RTCPeerConnection with its one ordered, reliable data channel
 * labelled `ai4all`, the mirror of a link in `python_peer/transport.py` (docs/wire.md, "Transport").
 * `BrowserTransport` (./peer.js) makes links by answering or offering; a link then carries frames:
 *
 * - Every data channel message is one chunk; frames are cut with `chunkMessage`, one frame's chunks
 *   are never interleaved with another's (sends are queued on one promise chain), and the sender
 *   waits on `bufferedamountlow` while `bufferedAmount` + the next chunk would pass the high water mark.
 * - Chunks are reassembled (`Reassembler`) and decoded; malformed input is answered with ERROR and the
 *   link stays open. PING is answered with PONG here, and `ping()` waits for the remote's PONG (the
 *   client's liveness probe). Other frames go to `onFrame(link, frame)`.
 * - State: `new -> connecting -> open -> closed`, changed in one place that logs `old -> new`; after
 *   `close()` every pending and later send fails with LinkClosedError.
 *
 * It touches only the RTCPeerConnection and RTCDataChannel it is given (their events, `send`,
 * `bufferedAmount`, `close`), so tests may hand it in-memory stand-ins. No DOM.
 */

import {
  ChunkError,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  MAX_MESSAGE_ID,
  MAX_STEP,
  NO_SESSION,
  Reassembler,
  WireError,
  chunkMessage,
  decodeFrame,
  encodeFrame,
  errorFrame,
  makeFrame,
} from '../protocol/wire.js';
import { LinkClosedError, LinkTimeoutError } from './errors.js';

export const CHANNEL_LABEL = 'ai4all';
const MAGIC_BYTES = Uint8Array.from(MAGIC, (c) => c.charCodeAt(0));

/**
 * @typedef {object} TransportConfig
 * @property {number} [chunkSize]  bytes per data channel message (16 KiB)
 * @property {number} [highWaterBytes]  the sender waits while bufferedAmount + chunk would exceed this
 * @property {number} [lowWaterBytes]  `bufferedAmountLowThreshold`, which wakes the sender
 * @property {number} [maxMessageBytes]
 * @property {number} [reassemblyPartial]
 * @property {number} [reassemblyTimeoutS]
 * @property {number} [gatherTimeoutMs]  how long to wait for ICE gathering before giving up on an offer
 * @property {number} [connectTimeoutMs]  how long an answered link may take to open its channel
 * @property {number} [maxLinks]
 * @property {string[] | null} [remoteAddresses]  remote candidate addresses kept (null: all)
 * @property {string | null} [localAddress]  host candidates rewritten to this address (null: as gathered)
 * @property {RTCIceServer[]} [iceServers]  STUN/TURN servers of every link (none by default)
 * @property {{info: Function, warn: Function}} [log]
 */

/**
 * Session and step of a refused frame when its header can be read, else zeros.
 * @param {Uint8Array | null} message
 * @returns {[Uint8Array, number]}
 */
function headerIds(message) {
  if (message === null || message.byteLength < HEADER_SIZE || MAGIC_BYTES.some((b, i) => message[i] !== b)) {
    return [NO_SESSION, 0];
  }
  const view = new DataView(message.buffer, message.byteOffset, message.byteLength);
  return [message.slice(8, 24), view.getUint32(24, true)];
}

/** One RTCPeerConnection with its one `ai4all` data channel, answered or offered by this side. */
export class BrowserLink {
  /** @type {RTCDataChannel | null} */
  #channel = null;
  #reassembler;
  #nextMessageId = 0;
  /** @type {Promise<void>} frames are sent one after another, so their chunks never interleave */
  #sending = Promise.resolve();
  /** @type {(() => void)[]} */
  #lowWaiters = [];
  /** @type {(() => void)[]} */
  #openWaiters = [];
  #nextPingStep = 1;
  /** @type {Map<number, {resolve: (at: number) => void, reject: (err: Error) => void}>} */
  #pings = new Map();

  /**
   * @param {string} remoteId
   * @param {string} linkId
   * @param {RTCPeerConnection} pc
   * @param {Required<Omit<TransportConfig, 'log'>> & {log: {info: Function, warn: Function}}} config
   * @param {(link: BrowserLink, frame: import('../protocol/wire.js').Frame) => void} onFrame
   * @param {(link: BrowserLink) => void} onClose
   */
  constructor(remoteId, linkId, pc, config, onFrame, onClose) {
    this.remoteId = remoteId;
    this.linkId = linkId;
    this.pc = pc;
    this.config = config;
    this.onFrame = onFrame;
    this.onClose = onClose;
    /** @type {'new' | 'connecting' | 'open' | 'closed'} */
    this.state = 'new';
    /** @type {string | null} */
    this.closeReason = null;
    /** true when this side offered (`BrowserTransport.connect`), false when it answered */
    this.initiator = false;
    /** @type {number | null} smoothed round trip of `ping()` in ms (TCP's 1/8 weighting); null before any */
    this.rttMs = null;
    /** @type {string[]} this side's candidates as gathered, before the rewrite (for diagnostics) */
    this.gatheredCandidates = [];
    this.stats = { framesSent: 0, bytesSent: 0, framesReceived: 0, bytesReceived: 0, badFrames: 0 };
    this.#reassembler = new Reassembler({
      maxMessageBytes: config.maxMessageBytes,
      maxPartial: config.reassemblyPartial,
      timeoutS: config.reassemblyTimeoutS,
    });
    this.name = `link ${linkId} to ${remoteId.slice(0, 8)}`;
    pc.addEventListener('datachannel', (event) => this.#attach(event.channel));
    pc.addEventListener('connectionstatechange', () => {
      if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        this.close(`connection ${pc.connectionState}`);
      }
    });
  }

  /** @param {string} state */
  #setState(state) {
    if (state === this.state) return;
    this.config.log.info(`${this.name}: ${this.state} -> ${state}`);
    this.state = /** @type {BrowserLink['state']} */ (state);
  }

  /**
   * Take the data channel this side created before its offer (`BrowserTransport.connect`).
   * @param {RTCDataChannel} channel
   */
  adoptChannel(channel) {
    this.#attach(channel);
  }

  /** @param {RTCDataChannel} channel */
  #attach(channel) {
    if (channel.label !== CHANNEL_LABEL || this.#channel !== null) {
      this.config.log.warn(`${this.name}: closing unexpected data channel ${JSON.stringify(channel.label)}`);
      channel.close();
      return;
    }
    this.#channel = channel;
    channel.binaryType = 'arraybuffer';
    channel.bufferedAmountLowThreshold = this.config.lowWaterBytes;
    channel.addEventListener('bufferedamountlow', () => this.#wakeSenders());
    channel.addEventListener('message', (event) => this.#onMessage(event.data));
    channel.addEventListener('close', () => this.close('data channel closed'));
    const opened = () => {
      if (this.state === 'closed') return;
      this.#setState('open');
      for (const wake of this.#openWaiters.splice(0)) wake();
    };
    if (channel.readyState === 'open') opened();
    else channel.addEventListener('open', opened);
  }

  #wakeSenders() {
    for (const wake of this.#lowWaiters.splice(0)) wake();
  }

  /** Resolve once the data channel is open; reject if the link closes first or after `timeoutMs`. */
  waitOpen(timeoutMs = this.config.connectTimeoutMs) {
    if (this.state === 'open') return Promise.resolve();
    if (this.state === 'closed') return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.close(`data channel did not open within ${timeoutMs} ms`);
        reject(this.#closedError());
      }, timeoutMs);
      this.#openWaiters.push(() => {
        clearTimeout(timer);
        if (this.state === 'open') resolve(undefined);
        else reject(this.#closedError());
      });
    });
  }

  #closedError() {
    return new LinkClosedError(`${this.name} is closed: ${this.closeReason ?? 'not open'}`);
  }

  /**
   * Send one frame; resolves with its encoded size in bytes when its last chunk is queued on the channel.
   * @param {import('../protocol/wire.js').FrameInit | import('../protocol/wire.js').Frame} frame
   * @returns {Promise<number>}
   */
  send(frame) {
    const bytes = encodeFrame(frame, { maxFrameBytes: this.config.maxMessageBytes });
    const task = this.#sending.then(() => this.#sendBytes(bytes));
    this.#sending = task.then(
      () => {},
      () => {},
    );
    return task;
  }

  /** @param {Uint8Array} bytes */
  async #sendBytes(bytes) {
    const channel = this.#channel;
    if (this.state !== 'open' || channel === null) throw this.#closedError();
    const id = this.#nextMessageId;
    this.#nextMessageId = id >= MAX_MESSAGE_ID ? 0 : id + 1;
    for (const chunk of chunkMessage(id, bytes, this.config.chunkSize)) {
      while (channel.bufferedAmount + chunk.byteLength > this.config.highWaterBytes) {
        await new Promise((resolve) => this.#lowWaiters.push(() => resolve(undefined)));
        if (this.state !== 'open') throw this.#closedError();
      }
      if (this.state !== 'open') throw this.#closedError();
      channel.send(/** @type {Uint8Array<ArrayBuffer>} */ (chunk));
    }
    this.stats.framesSent++;
    this.stats.bytesSent += bytes.byteLength;
    return bytes.byteLength;
  }

  /**
   * Send a PING and resolve with the milliseconds until its PONG (queueing behind earlier frames
   * included); LinkTimeoutError after `timeoutMs`, LinkClosedError if the link closes first.
   * @param {number} [timeoutMs]
   * @returns {Promise<number>}
   */
  async ping(timeoutMs = 5_000) {
    const step = this.#nextPingStep;
    this.#nextPingStep = step >= MAX_STEP ? 1 : step + 1;
    const start = performance.now();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const answered = new Promise((resolve, reject) => {
      this.#pings.set(step, { resolve, reject });
      timer = setTimeout(
        () => reject(new LinkTimeoutError(`${this.name}: no PONG within ${timeoutMs} ms`)),
        timeoutMs,
      );
    });
    try {
      await Promise.race([answered, this.send(makeFrame({ type: FrameType.PING, step })).then(() => answered)]);
      const at = /** @type {number} */ (await answered);
      const rtt = at - start;
      this.rttMs = this.rttMs === null ? rtt : 0.875 * this.rttMs + 0.125 * rtt;
      return rtt;
    } finally {
      clearTimeout(timer);
      this.#pings.delete(step);
    }
  }

  /** @param {import('../protocol/wire.js').Frame} frame */
  #reply(frame) {
    this.send(frame).catch((err) => this.config.log.warn(`${this.name}: reply not sent: ${err.message}`));
  }

  /** @param {unknown} data */
  #onMessage(data) {
    if (this.state === 'closed') return;
    try {
      this.#receive(data);
    } catch (err) {
      // a bug here must not take other links down
      this.config.log.warn(`${this.name}: receive failed: ${err instanceof Error ? err.stack : err}`);
      this.close('internal receive error');
    }
  }

  /** @param {unknown} data */
  #receive(data) {
    const now = performance.now() / 1000;
    for (const mid of this.#reassembler.expire(now)) this.config.log.warn(`${this.name}: dropped stale partial message ${mid}`);
    if (typeof data === 'string') {
      this.#refuse(new ChunkError('text message on the ai4all channel: chunks are binary'), null);
      return;
    }
    let message;
    try {
      message = this.#reassembler.feed(/** @type {ArrayBuffer} */ (data), now);
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      this.#refuse(err, null);
      return;
    }
    if (message === null) return;
    let frame;
    try {
      frame = decodeFrame(message, { maxFrameBytes: this.config.maxMessageBytes });
    } catch (err) {
      if (!(err instanceof WireError)) throw err;
      this.#refuse(err, message);
      return;
    }
    this.stats.framesReceived++;
    this.stats.bytesReceived += message.byteLength;
    if (frame.type === FrameType.PING) {
      this.#reply(makeFrame({ type: FrameType.PONG, session: frame.session, step: frame.step, meta: frame.meta }));
    } else if (frame.type === FrameType.PONG) {
      this.#pings.get(frame.step)?.resolve(performance.now());
    } else {
      this.onFrame(this, frame);
    }
  }

  /**
   * Answer malformed input with ERROR; the link and every other link go on.
   * @param {WireError} error
   * @param {Uint8Array | null} message
   */
  #refuse(error, message) {
    this.stats.badFrames++;
    const count = this.stats.badFrames;
    if (count <= 10 || count % 1000 === 0) {
      this.config.log.warn(`${this.name}: refused input #${count} (${error.name}): ${error.message}`);
    }
    const [session, step] = headerIds(message);
    this.#reply(errorFrame(session, step, error.code, error.message));
  }

  /** Close the link for good; every pending and later send fails. @param {string} [reason] */
  close(reason = 'closed by this side') {
    if (this.state === 'closed') return;
    this.closeReason = reason;
    this.#setState('closed');
    this.#wakeSenders();
    for (const wake of this.#openWaiters.splice(0)) wake();
    for (const pending of this.#pings.values()) pending.reject(this.#closedError());
    try {
      this.#channel?.close();
      this.pc.close();
    } catch {
      // already closed
    }
    this.onClose(this);
  }

  /** Called by the transport once the offer is being answered. */
  markConnecting() {
    this.#setState('connecting');
  }
}

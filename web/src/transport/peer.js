// @ts-check
/**
 * WebRTC links in the browser, the mirror of `python_peer/transport.py` (docs/wire.md, "Transport"):
 * `handleSignal` answers the offers that native or browser peers send through signaling, and
 * `connect(remoteId)` offers (creating the `ai4all` channel before the offer, as the connecting side
 * must) and completes the link when `handleSignal` gets the answer.
 *
 * - One `RTCPeerConnection({iceServers})` per link (no STUN or TURN server by default; a page's
 *   `ice.servers` through `transportConfigFor`), exactly one ordered, reliable data channel labelled
 *   `ai4all`; any other channel is closed.
 * - ICE is not trickled: the answer is sent once gathering is complete, with every candidate in it.
 * - Loopback only by default: remote candidates on any address but 127.0.0.1 are dropped from the
 *   offer, and this side's host candidates are rewritten to 127.0.0.1 (Chromium gathers on the
 *   machine's interfaces, never on loopback, but it receives on all of them: with mDNS hiding off,
 *   Chromium 156 offers e.g. `192.0.2.2` and `fd00::2` host candidates on sockets bound to 0.0.0.0 and
 *   [::], so `127.0.0.1:<same port>` reaches it; tests/browser/test_browser_peer.py checks the selected
 *   pair targets 127.0.0.1). Relayed, reflexive, TCP, IPv6 and mDNS candidates are left out, so no
 *   packet targets a non-loopback address. `remoteAddresses: null, localAddress: null` (a page config's
 *   `ice.loopback_only: false`) lifts both: every candidate is kept as gathered and as received.
 * - Every data channel message is one chunk; frames are cut with `chunkMessage`, one frame's chunks
 *   are never interleaved with another's, and the sender waits on `bufferedamountlow` above the high
 *   water mark. PING is answered with PONG here, and `link.ping()` waits for the remote's PONG (the
 *   client's liveness probe); malformed input is answered with ERROR and the link stays open. Other
 *   frames go to `onFrame(link, frame)`.
 *
 * No DOM: only `RTCPeerConnection`, which workers and pages both have.
 */

import {
  ChunkError,
  CoreError,
  DEFAULT_CHUNK_SIZE,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  MAX_FRAME_BYTES,
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

export const CHANNEL_LABEL = 'ai4all';
export const SIGNAL_KIND = 'webrtc';
export const LOOPBACK = '127.0.0.1';
export const MAX_SDP_CHARS = 65536;
export const MAX_PEER_ID_CHARS = 256;
const LINK_ID_RE = /^[0-9A-Za-z_-]{1,64}$/;
const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
/** RFC 7064/7065 STUN and TURN URLs, as `ai4all signal --ice-server` checks them (python_peer/peer_cli.py). */
export const ICE_URL_RE = /^(stuns?|turns?):[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::\d{1,5})?(?:\?transport=(?:udp|tcp))?$/;
export const MAX_ICE_SERVERS = 16;
const MAX_ICE_SECRET_CHARS = 512;
const MAX_ADDRESSES = 64;
const MAGIC_BYTES = Uint8Array.from(MAGIC, (c) => c.charCodeAt(0));

/** A signaling payload that is malformed, of another kind, or refused. */
export class SignalPayloadError extends CoreError {}

/** The link is closed, or the manager refuses a new one. */
export class LinkClosedError extends CoreError {}

/** The manager is closed or full. */
export class TransportError extends CoreError {}

/** No answer came, the data channel did not open, or no PONG came back in time. */
export class LinkTimeoutError extends TransportError {}

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

const DEFAULTS = Object.freeze({
  chunkSize: DEFAULT_CHUNK_SIZE,
  highWaterBytes: 1024 * 1024,
  lowWaterBytes: 256 * 1024,
  maxMessageBytes: MAX_FRAME_BYTES,
  reassemblyPartial: 8,
  reassemblyTimeoutS: 30,
  gatherTimeoutMs: 10_000,
  connectTimeoutMs: 20_000,
  maxLinks: 64,
  remoteAddresses: /** @type {string[] | null} */ ([LOOPBACK]),
  localAddress: /** @type {string | null} */ (LOOPBACK),
  iceServers: /** @type {RTCIceServer[]} */ ([]),
});

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
const shown = (value) => JSON.stringify(value)?.slice(0, 100) ?? String(value);

/**
 * Checked copies of STUN/TURN servers (`RTCIceServer`s): each `{urls, username?, credential?}` with
 * `urls` a STUN/TURN URL or a non-empty list of them; a turn:/turns: server needs a username and a
 * credential (1-512 printable characters). Throws TransportError on anything else.
 * @param {unknown} servers
 * @returns {RTCIceServer[]}
 */
export function checkIceServers(servers) {
  if (!Array.isArray(servers) || servers.length > MAX_ICE_SERVERS) {
    throw new TransportError(`ICE servers must be a list of at most ${MAX_ICE_SERVERS}, not ${shown(servers)}`);
  }
  return servers.map((server, i) => {
    if (!isPlainObject(server)) throw new TransportError(`ICE server ${i} is not an object: ${shown(server)}`);
    const extra = Object.keys(server).filter((k) => !['urls', 'username', 'credential'].includes(k));
    if (extra.length) throw new TransportError(`ICE server ${i} has unknown keys ${shown(extra)}`);
    const urls = typeof server.urls === 'string' ? [server.urls] : server.urls;
    if (!Array.isArray(urls) || urls.length < 1 || urls.length > MAX_ICE_SERVERS) {
      throw new TransportError(`ICE server ${i} needs urls: 1..${MAX_ICE_SERVERS} STUN/TURN URLs, not ${shown(server.urls)}`);
    }
    for (const url of urls) {
      if (typeof url !== 'string' || url.length > 300 || !ICE_URL_RE.test(url)) {
        throw new TransportError(
          `ICE server ${i}: ${shown(url)} is not a STUN or TURN URL (stun:HOST[:PORT], stuns:, turn:HOST[:PORT][?transport=udp|tcp], turns:)`,
        );
      }
    }
    /** @type {RTCIceServer} */
    const out = { urls: [...urls] };
    const turn = urls.some((url) => url.startsWith('turn'));
    for (const key of /** @type {const} */ (['username', 'credential'])) {
      const value = server[key];
      if (value === undefined || value === null) {
        if (turn) throw new TransportError(`ICE server ${i} (${urls[0]}) is a TURN server: it needs a username and a credential`);
        continue;
      }
      if (typeof value !== 'string' || value.length < 1 || value.length > MAX_ICE_SECRET_CHARS || !/^[\x21-\x7e][\x20-\x7e]*$/.test(value)) {
        throw new TransportError(`ICE server ${i}: ${key} must be 1-${MAX_ICE_SECRET_CHARS} printable characters`);
      }
      out[key] = value;
    }
    return out;
  });
}

/**
 * The ICE part of a BrowserTransport's config from a page configuration (docs/browser.md, "Page
 * configuration"): its `ice.servers`, and loopback confinement unless `ice.loopback_only` is false. A
 * configuration without `ice` (an older node) keeps the loopback defaults. Throws TransportError on a
 * malformed `ice`.
 * @param {{ice?: unknown}} pageConfig
 * @returns {{iceServers: RTCIceServer[], remoteAddresses: string[] | null, localAddress: string | null}}
 */
export function transportConfigFor(pageConfig) {
  const ice = pageConfig?.ice;
  if (ice === undefined) return { iceServers: [], remoteAddresses: [LOOPBACK], localAddress: LOOPBACK };
  if (!isPlainObject(ice) || typeof ice.loopback_only !== 'boolean') {
    throw new TransportError(`the page configuration's ice must be {servers: [...], loopback_only: true|false}, not ${shown(ice)}`);
  }
  const iceServers = checkIceServers(ice.servers);
  if (ice.loopback_only) return { iceServers, remoteAddresses: [LOOPBACK], localAddress: LOOPBACK };
  return { iceServers, remoteAddresses: null, localAddress: null };
}

/**
 * Check the address and server settings of a transport config (they may come from another context,
 * e.g. the embed worker's relay): throws TransportError, returns checked copies.
 * @param {{remoteAddresses: unknown, localAddress: unknown, iceServers: unknown}} config
 */
function checkIceConfig({ remoteAddresses, localAddress, iceServers }) {
  const okList =
    remoteAddresses === null ||
    (Array.isArray(remoteAddresses) && remoteAddresses.length <= MAX_ADDRESSES && remoteAddresses.every((a) => typeof a === 'string' && a.length <= 64));
  if (!okList) throw new TransportError(`remoteAddresses must be null or a list of addresses, not ${shown(remoteAddresses)}`);
  if (localAddress !== null && !(typeof localAddress === 'string' && IPV4_RE.test(localAddress))) {
    throw new TransportError(`localAddress must be null or an IPv4 address, not ${shown(localAddress)}`);
  }
  return {
    remoteAddresses: remoteAddresses === null ? null : [.../** @type {string[]} */ (remoteAddresses)],
    localAddress: /** @type {string | null} */ (localAddress),
    iceServers: checkIceServers(iceServers),
  };
}

/**
 * Check an incoming signaling payload; return its type, sdp and link id, or throw SignalPayloadError.
 * @param {string} sender
 * @param {unknown} payload
 * @returns {{type: 'offer' | 'answer', sdp: string, link: string}}
 */
export function parseSignal(sender, payload) {
  if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
    throw new SignalPayloadError(`signal from peer ${sender} is not an object`);
  }
  const { kind, type, sdp, link } = /** @type {{[key: string]: unknown}} */ (payload);
  if (kind !== SIGNAL_KIND) throw new SignalPayloadError(`signal from peer ${sender} has kind ${String(kind).slice(0, 40)}, not webrtc`);
  if (type !== 'offer' && type !== 'answer') {
    throw new SignalPayloadError(`signal from peer ${sender} has type ${String(type).slice(0, 40)}: expected offer or answer`);
  }
  if (typeof link !== 'string' || !LINK_ID_RE.test(link)) {
    throw new SignalPayloadError(`${type} from peer ${sender} has link ${String(link).slice(0, 80)}: need [0-9A-Za-z_-]{1,64}`);
  }
  if (typeof sdp !== 'string' || sdp.length < 1 || sdp.length > MAX_SDP_CHARS) {
    throw new SignalPayloadError(`${type} from peer ${sender} needs an sdp string of 1..${MAX_SDP_CHARS} chars`);
  }
  if (!sdp.includes('m=application')) {
    throw new SignalPayloadError(`${type} from peer ${sender} has no data channel (m=application) section`);
  }
  return { type, sdp, link };
}

/**
 * Drop `a=candidate` lines whose address is not in `allowed` (mDNS names included).
 * @param {string} sdp
 * @param {readonly string[] | null} allowed
 * @returns {{sdp: string, dropped: number}}
 */
export function filterRemoteCandidates(sdp, allowed) {
  if (allowed === null) return { sdp, dropped: 0 };
  let dropped = 0;
  const kept = sdp.split(/\r?\n/).filter((line) => {
    if (!line.startsWith('a=candidate:')) return true;
    const parts = line.split(' ');
    const ok = parts.length >= 8 && allowed.includes(parts[4]);
    if (!ok) dropped++;
    return ok;
  });
  while (kept.length && kept[kept.length - 1] === '') kept.pop();
  return { sdp: `${kept.join('\r\n')}\r\n`, dropped };
}

/**
 * This side's SDP with only UDP IPv4 host candidates, their address rewritten to `address`, and the
 * connection lines pointed at it too; everything else (IPv6, mDNS, TCP, srflx, relay) is dropped.
 * @param {string} sdp
 * @param {string | null} address  null: keep the SDP as gathered
 * @returns {{sdp: string, kept: number}}
 */
export function rewriteLocalCandidates(sdp, address) {
  if (address === null) return { sdp, kept: sdp.split('\n').filter((l) => l.startsWith('a=candidate:')).length };
  let kept = 0;
  const seen = new Set();
  const lines = [];
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('a=candidate:')) {
      const parts = line.split(' ');
      const isHostUdp = parts.length >= 8 && parts[2].toLowerCase() === 'udp' && parts[7] === 'host';
      if (!isHostUdp || !IPV4_RE.test(parts[4])) continue;
      parts[4] = address;
      const key = `${parts[1]} ${parts[4]} ${parts[5]}`; // component, address, port
      if (seen.has(key)) continue;
      seen.add(key);
      kept++;
      lines.push(parts.join(' '));
    } else if (line.startsWith('c=IN IP4 ')) {
      lines.push(`c=IN IP4 ${address}`);
    } else if (line.startsWith('a=rtcp:') && line.includes(' IN IP4 ')) {
      lines.push(line.replace(/ IN IP4 \S+/, ` IN IP4 ${address}`));
    } else {
      lines.push(line);
    }
  }
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return { sdp: `${lines.join('\r\n')}\r\n`, kept };
}

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
    this.#sending = task.catch(() => {});
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
      channel.send(chunk);
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

/**
 * Answers offers that arrive through signaling, makes offers (`connect`), and keeps the links.
 * `sendSignal(peerId, payload)` is typically `signalClient.sendSignal.bind(signalClient)`; every
 * verified `webrtc` signal goes to `handleSignal` (offers are answered, answers complete a `connect`).
 * `onLinkOpen` is called for answered links only: `connect` itself returns the open link.
 */
export class BrowserTransport {
  /** @type {Map<string, BrowserLink>} */
  #links = new Map();
  #closed = false;

  /**
   * @param {object} options
   * @param {(peerId: string, payload: {[key: string]: unknown}) => Promise<void>} options.sendSignal
   * @param {(link: BrowserLink, frame: import('../protocol/wire.js').Frame) => void} options.onFrame
   * @param {(link: BrowserLink) => void} [options.onLinkClosed]
   * @param {(link: BrowserLink) => void} [options.onLinkOpen]
   * @param {TransportConfig} [options.config]
   */
  constructor({ sendSignal, onFrame, onLinkClosed, onLinkOpen, config = {} }) {
    this.sendSignal = sendSignal;
    this.onFrame = onFrame;
    this.onLinkClosed = onLinkClosed ?? (() => {});
    this.onLinkOpen = onLinkOpen ?? (() => {});
    this.config = { ...DEFAULTS, log: console, ...config };
    Object.assign(this.config, checkIceConfig(this.config));
    const { chunkSize, highWaterBytes, lowWaterBytes } = this.config;
    if (lowWaterBytes > highWaterBytes - chunkSize) {
      throw new TransportError(`lowWaterBytes ${lowWaterBytes} must be at most highWaterBytes - chunkSize`);
    }
  }

  /** The links open or opening now. */
  get links() {
    return [...this.#links.values()];
  }

  /**
   * Handle one verified signal (`{sender, payload}` from SignalClient). An offer is answered; an answer
   * completes the `connect()` waiting for it. Throws SignalPayloadError on bad payloads and on answers
   * that no `connect()` waits for; other links are not affected.
   * @param {{sender: string, payload: {[key: string]: unknown}}} signal
   * @returns {Promise<BrowserLink>}
   */
  async handleSignal({ sender, payload }) {
    if (this.#closed) throw new TransportError('the transport is closed');
    const { type, sdp, link: linkId } = parseSignal(sender, payload);
    if (type === 'answer') return this.#complete(sender, linkId, sdp);
    const key = `${sender}/${linkId}`;
    if (this.#links.has(key)) throw new SignalPayloadError(`offer from peer ${sender} repeats link ${linkId}`);
    if (this.#links.size >= this.config.maxLinks) {
      throw new TransportError(`${this.#links.size} links already; refusing an offer from ${sender}`);
    }
    const remote = filterRemoteCandidates(sdp, this.config.remoteAddresses);
    if (remote.dropped) this.config.log.info(`offer from ${sender.slice(0, 8)}: dropped ${remote.dropped} candidates outside remoteAddresses`);
    const pc = new RTCPeerConnection({ iceServers: this.config.iceServers });
    const link = new BrowserLink(sender, linkId, pc, this.config, this.onFrame, (closed) => {
      if (this.#links.get(key) === closed) this.#links.delete(key);
      this.onLinkClosed(closed);
    });
    this.#links.set(key, link);
    link.markConnecting();
    try {
      await pc.setRemoteDescription({ type: 'offer', sdp: remote.sdp });
      await pc.setLocalDescription(await pc.createAnswer());
      await this.#gathered(pc);
      const local = pc.localDescription;
      if (local === null) throw new SignalPayloadError('no local description after gathering');
      link.gatheredCandidates = local.sdp.split(/\r?\n/).filter((line) => line.startsWith('a=candidate:'));
      const answer = rewriteLocalCandidates(local.sdp, this.config.localAddress);
      if (answer.kept === 0) throw new SignalPayloadError('no usable ICE candidate was gathered for the answer');
      await this.sendSignal(sender, { kind: SIGNAL_KIND, type: 'answer', sdp: answer.sdp, link: linkId });
    } catch (err) {
      link.close(`answering failed: ${err instanceof Error ? err.message : err}`);
      if (err instanceof CoreError) throw err;
      throw new SignalPayloadError(`offer from peer ${sender}: ${err instanceof Error ? err.message : err}`);
    }
    link.waitOpen().then(
      () => this.onLinkOpen(link),
      (err) => this.config.log.warn(`${link.name}: ${err.message}`),
    );
    return link;
  }

  /**
   * Open a link to `remoteId`: create the `ai4all` channel, send the offer through `sendSignal`, wait for
   * the answer (given to `handleSignal`) and the open channel. LinkTimeoutError after `timeoutMs` ("no
   * answer came" or "the data channel did not open"), TransportError when the offer cannot be made or
   * delivered, LinkClosedError when the connection fails first; the half-open link is closed in each case.
   * @param {string} remoteId
   * @param {{timeoutMs?: number}} [options]
   * @returns {Promise<BrowserLink>}
   */
  async connect(remoteId, { timeoutMs = this.config.connectTimeoutMs } = {}) {
    if (this.#closed) throw new TransportError('the transport is closed');
    if (typeof remoteId !== 'string' || remoteId.length < 1 || remoteId.length > MAX_PEER_ID_CHARS) {
      throw new TransportError(`peer id ${String(remoteId).slice(0, 80)} is not a string of 1..${MAX_PEER_ID_CHARS} chars`);
    }
    if (!(timeoutMs > 0)) throw new TransportError(`timeoutMs must be positive, not ${timeoutMs}`);
    if (this.#links.size >= this.config.maxLinks) {
      throw new TransportError(`${this.#links.size} links already; refusing a link to ${remoteId}`);
    }
    const linkId = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, '0')).join('');
    const key = `${remoteId}/${linkId}`;
    const pc = new RTCPeerConnection({ iceServers: this.config.iceServers });
    const link = new BrowserLink(remoteId, linkId, pc, this.config, this.onFrame, (closed) => {
      if (this.#links.get(key) === closed) this.#links.delete(key);
      this.onLinkClosed(closed);
    });
    link.initiator = true;
    this.#links.set(key, link);
    const started = performance.now();
    const left = () => timeoutMs - (performance.now() - started);
    const stage = () => (pc.remoteDescription === null ? 'no answer came' : 'the data channel did not open');
    try {
      link.adoptChannel(pc.createDataChannel(CHANNEL_LABEL, { ordered: true }));
      link.markConnecting();
      await pc.setLocalDescription(await pc.createOffer());
      try {
        await this.#gathered(pc, Math.min(this.config.gatherTimeoutMs, Math.max(1, left())));
      } catch (err) {
        throw new LinkTimeoutError(`${link.name}: ${err instanceof Error ? err.message : err}`);
      }
      const local = pc.localDescription;
      if (local === null) throw new TransportError('no local description after gathering');
      link.gatheredCandidates = local.sdp.split(/\r?\n/).filter((line) => line.startsWith('a=candidate:'));
      const offer = rewriteLocalCandidates(local.sdp, this.config.localAddress);
      if (offer.kept === 0) throw new TransportError('no usable ICE candidate was gathered for the offer');
      try {
        await this.sendSignal(remoteId, { kind: SIGNAL_KIND, type: 'offer', sdp: offer.sdp, link: linkId });
      } catch (err) {
        throw new TransportError(`the offer to peer ${remoteId} was not delivered: ${err instanceof Error ? err.message : err}`);
      }
      if (left() <= 0) throw new LinkTimeoutError(`${link.name}: ${stage()} within ${timeoutMs} ms`);
      try {
        await link.waitOpen(left());
      } catch (err) {
        if (link.closeReason?.startsWith('data channel did not open within')) {
          throw new LinkTimeoutError(`${link.name}: ${stage()} within ${timeoutMs} ms`);
        }
        throw err;
      }
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      link.close(`connect failed: ${message}`);
      if (err instanceof CoreError) throw err;
      throw new TransportError(`link to peer ${remoteId}: ${message}`);
    }
    return link;
  }

  /**
   * An answer to one of our offers: set it on the waiting link.
   * @param {string} sender
   * @param {string} linkId
   * @param {string} sdp
   * @returns {Promise<BrowserLink>}
   */
  async #complete(sender, linkId, sdp) {
    const link = this.#links.get(`${sender}/${linkId}`);
    if (link === undefined || !link.initiator || link.pc.signalingState !== 'have-local-offer') {
      throw new SignalPayloadError(
        `answer from peer ${sender} for link ${linkId}: no connect() is waiting for it ` +
          '(unknown, timed out, closed or answered already)',
      );
    }
    const remote = filterRemoteCandidates(sdp, this.config.remoteAddresses);
    if (remote.dropped) this.config.log.info(`answer from ${sender.slice(0, 8)}: dropped ${remote.dropped} candidates outside remoteAddresses`);
    try {
      await link.pc.setRemoteDescription({ type: 'answer', sdp: remote.sdp });
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      link.close(`unusable answer: ${message}`);
      throw new SignalPayloadError(`answer from peer ${sender} for link ${linkId} is unusable: ${message}`);
    }
    return link;
  }

  /**
   * @param {RTCPeerConnection} pc
   * @param {number} [timeoutMs]
   */
  #gathered(pc, timeoutMs = this.config.gatherTimeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve, reject) => {
      const done = () => {
        if (pc.iceGatheringState !== 'complete') return;
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', done);
        resolve(undefined);
      };
      const timer = setTimeout(() => {
        pc.removeEventListener('icegatheringstatechange', done);
        reject(new SignalPayloadError(`ICE gathering did not complete within ${timeoutMs} ms`));
      }, timeoutMs);
      pc.addEventListener('icegatheringstatechange', done);
    });
  }

  /** Close every link; later offers are refused. */
  close() {
    this.#closed = true;
    for (const link of [...this.#links.values()]) link.close('transport closed');
  }
}

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
 *   Candidates are confined to loopback unless the page configuration says otherwise (./ice.js).
 * - Frames are chunked below the data channel's message limit, with backpressure; PING is answered
 *   with PONG; malformed input is answered with ERROR and the link stays open (./link.js). Other
 *   frames go to `onFrame(link, frame)`.
 *
 * Files of this folder (every public name is importable from this module):
 *
 * - `peer.js` (this one): `BrowserTransport`, which answers and offers and keeps the links; `parseSignal`.
 * - `link.js`: `BrowserLink`, one RTCPeerConnection and its data channel: chunked frames, reassembly,
 *   backpressure, ping, refusal of malformed input.
 * - `ice.js`: STUN/TURN servers, the page configuration's `ice`, loopback confinement of candidates.
 * - `errors.js`: `SignalPayloadError`, `LinkClosedError`, `TransportError`, `LinkTimeoutError`.
 *
 * No DOM: only `RTCPeerConnection`, which pages have (the embedded node's worker has none: its links
 * live on the page, web/src/embed/relay.js).
 */

import { CoreError, DEFAULT_CHUNK_SIZE, MAX_FRAME_BYTES } from '../protocol/wire.js';
import { MAX_SDP_CHARS, WEBRTC_SIGNAL } from '../protocol/constants.js';
import { LinkTimeoutError, SignalPayloadError, TransportError } from './errors.js';
import { LOOPBACK, checkIceConfig, filterRemoteCandidates, rewriteLocalCandidates } from './ice.js';
import { BrowserLink, CHANNEL_LABEL } from './link.js';

export { LinkClosedError, LinkTimeoutError, SignalPayloadError, TransportError } from './errors.js';
export {
  ICE_URL_RE,
  LOOPBACK,
  MAX_ICE_SERVERS,
  checkIceServers,
  filterRemoteCandidates,
  rewriteLocalCandidates,
  transportConfigFor,
} from './ice.js';
export { BrowserLink, CHANNEL_LABEL } from './link.js';

/** @typedef {import('./link.js').TransportConfig} TransportConfig */

/** The kind of a WebRTC signal payload (`WEBRTC_SIGNAL`, generated from `python_peer/core/protocol.py`). */
export const SIGNAL_KIND = WEBRTC_SIGNAL;
export { MAX_SDP_CHARS };
export const MAX_PEER_ID_CHARS = 256;
const LINK_ID_RE = /^[0-9A-Za-z_-]{1,64}$/;

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

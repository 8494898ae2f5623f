// @ts-check
/**
 * In-memory stand-ins for WebRTC, for the transport's and the relay's Node tests (`node --test`):
 * `FakeChannel` (an RTCDataChannel pair end with `bufferedAmount`, `bufferedamountlow`, loss and manual
 * delivery) and `FakePeerConnection` (what `BrowserLink` and `BrowserTransport` use of an
 * RTCPeerConnection: events, descriptions, `close`). No test lives here.
 */

import { CHANNEL_LABEL } from '../src/transport/link.js';

/**
 * One end of an in-memory RTCDataChannel pair. `send` queues a copy and counts it in `bufferedAmount`;
 * `flush()` delivers the queue to the other end (firing `bufferedamountlow` when the amount falls to the
 * threshold), or it is delivered on its own unless `manual`. `drop(n)` loses the next n chunks.
 */
export class FakeChannel extends EventTarget {
  /** @param {{manual?: boolean}} [options] */
  constructor({ manual = false } = {}) {
    super();
    this.label = CHANNEL_LABEL;
    this.readyState = 'connecting';
    this.binaryType = 'blob';
    this.bufferedAmount = 0;
    this.bufferedAmountLowThreshold = 0;
    this.maxBuffered = 0;
    this.manual = manual;
    this.toDrop = 0;
    /** @type {FakeChannel | null} */
    this.peer = null;
    /** @type {(ArrayBuffer | string)[]} */
    this.queue = [];
    this.scheduled = false;
  }

  /** @param {ArrayBuffer | ArrayBufferView | string} data */
  send(data) {
    if (this.readyState !== 'open') throw new DOMException(`send on a ${this.readyState} channel`, 'InvalidStateError');
    const copy =
      typeof data === 'string' ? data : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice().buffer : data.slice(0);
    this.bufferedAmount += typeof copy === 'string' ? copy.length : copy.byteLength;
    this.maxBuffered = Math.max(this.maxBuffered, this.bufferedAmount);
    this.queue.push(copy);
    if (!this.manual && !this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    for (const data of this.queue.splice(0)) {
      const before = this.bufferedAmount;
      this.bufferedAmount -= typeof data === 'string' ? data.length : data.byteLength;
      if (this.toDrop > 0) this.toDrop--;
      else if (this.peer?.readyState === 'open') this.peer.dispatchEvent(new MessageEvent('message', { data }));
      if (before > this.bufferedAmountLowThreshold && this.bufferedAmount <= this.bufferedAmountLowThreshold) {
        this.dispatchEvent(new Event('bufferedamountlow'));
      }
    }
  }

  open() {
    this.readyState = 'open';
    this.dispatchEvent(new Event('open'));
  }

  close() {
    for (const end of [this, this.peer]) {
      if (end === null || end.readyState === 'closed') continue;
      end.readyState = 'closed';
      end.dispatchEvent(new Event('close'));
    }
  }
}

/** A stand-in RTCPeerConnection: only what BrowserLink listens to and calls. */
export class FakePeerConnection extends EventTarget {
  /** @type {FakePeerConnection[]} every one made, newest last (a test reaches the transport's through it) */
  static made = [];

  /** @param {RTCConfiguration} [config] */
  constructor(config = {}) {
    super();
    this.config = config;
    this.connectionState = 'new';
    this.signalingState = 'stable';
    this.iceGatheringState = 'complete';
    /** @type {RTCSessionDescriptionInit | null} */
    this.localDescription = null;
    /** @type {RTCSessionDescriptionInit | null} */
    this.remoteDescription = null;
    FakePeerConnection.made.push(this);
  }

  /** @param {RTCSessionDescriptionInit} description */
  async setRemoteDescription(description) {
    this.remoteDescription = description;
    this.signalingState = description.type === 'offer' ? 'have-remote-offer' : 'stable';
  }

  async createAnswer() {
    return { type: /** @type {const} */ ('answer'), sdp: FAKE_SDP };
  }

  async createOffer() {
    return { type: /** @type {const} */ ('offer'), sdp: FAKE_SDP };
  }

  /** @param {RTCSessionDescriptionInit} description */
  async setLocalDescription(description) {
    this.localDescription = description;
    if (description.type === 'offer') this.signalingState = 'have-local-offer';
  }

  /** The remote side opened its data channel: hand it to the link, as Chromium's `datachannel` event does. @param {FakeChannel} channel */
  deliverChannel(channel) {
    this.dispatchEvent(Object.assign(new Event('datachannel'), { channel }));
  }

  close() {
    this.connectionState = 'closed';
  }
}

/** An SDP with a data channel section and one UDP IPv4 host candidate (what the transport keeps). */
export const FAKE_SDP =
  'v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n' +
  'a=candidate:1 1 udp 2122260223 192.0.2.2 5000 typ host\r\n';

/**
 * Two ends of a channel, joined.
 * @param {{manual?: boolean}} [options]  `manual`: the first end delivers only on `flush()`
 */
export function channelPair({ manual = false } = {}) {
  const a = new FakeChannel({ manual });
  const b = new FakeChannel();
  a.peer = b;
  b.peer = a;
  return [a, b];
}


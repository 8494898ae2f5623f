// @ts-check
/**
 * The browser's side of signaling: a mirror of `python_peer/signal_client.py` on WebCrypto and the
 * browser WebSocket. `docs/signaling.md` is the protocol; this module imports nothing of the server.
 *
 * `SignalClient` takes an `Identity` (`../identity/identity.js`: an Ed25519 key pair, peer id = hex of
 * the raw public key) and connects to the first
 * reachable URL of its list, proves it holds its key (signing the hello nonce), announces itself as a
 * "browser" peer and re-announces every `reannounceMs`; when the node goes away it fails over to the
 * next URL at once, then backs off exponentially (with jitter) once every URL failed in a row.
 * Announcements from `lookup` and incoming signals are verified against the signer's key, so a node
 * can drop messages but not forge them. No DOM: it runs in a page or a Worker.
 *
 * Files: `messages.js` (signaling errors, announcements parsed and verified), `link.js` (one
 * websocket to one node), this module (the client: connection, fail-over, announce, lookup, signals),
 * and `../identity/identity.js` (keys, signatures, signing bytes). This module re-exports the names of
 * the other three, so `import ... from 'signaling/client.js'` keeps working; new code should import
 * the identity from `identity/identity.js`.
 */

import {
  ANNOUNCE_CONTEXT,
  BYE_CONTEXT,
  AUTH_CONTEXT,
  MAX_SIGNAL_AGE_MS,
  MAX_SIGNAL_PAYLOAD_BYTES,
  MAX_TTL_MS,
  MIN_TTL_MS,
  PROTOCOL_VERSION,
  SIGNAL_CONTEXT,
} from '../protocol/constants.js';
import { CoreError } from '../protocol/errors.js';
import { isPlainObject } from '../protocol/values.js';
import { PEER_ID_RE, canonicalBytes, verifyBody } from '../identity/identity.js';
import { Flag, Link, LinkLost, withTimeout } from './link.js';
import {
  MessageError,
  RemoteSignalingError,
  SignalClientError,
  URL_RE,
  byeBody,
  parseAnnouncement,
  verifyPeers,
} from './messages.js';

export {
  ANNOUNCE_CONTEXT,
  AUTH_CONTEXT,
  MAX_CLOCK_SKEW_MS,
  MAX_COUNTER,
  MAX_DEPTH,
  MAX_SAFE_INT,
  MAX_SERVES,
  MAX_SIGNAL_AGE_MS,
  MAX_SIGNAL_PAYLOAD_BYTES,
  MAX_SIGNALING_URLS,
  MAX_TTL_MS,
  MIN_TTL_MS,
  PROTOCOL_VERSION,
  SIGNAL_CONTEXT,
} from '../protocol/constants.js';
export * from '../identity/identity.js';
export * from './messages.js';
export { MAX_PENDING, MAX_REPLY_BYTES } from './link.js';

/** @typedef {import('./messages.js').Logger} Logger */
/** @typedef {import('./messages.js').ServedSpan} ServedSpan */
/** @typedef {import('./messages.js').Announcement} Announcement */
/** @typedef {import('../identity/identity.js').Identity} Identity */
/** @typedef {import('../identity/identity.js').ExportedIdentity} ExportedIdentity */
/** @typedef {{sender: string, payload: {[key: string]: unknown}, tsMs: number}} IncomingSignal */

/**
 * @typedef {object} SignalClientConfig  times in ms
 * @property {string[]} urls
 * @property {ServedSpan[]} [serves]
 * @property {number} [throughputMilli]
 * @property {number} [kvFreeTokens]
 * @property {number} [ttlMs]  announcement lifetime (120 000)
 * @property {number} [reannounceMs]  renewal period, well under ttlMs (40 000)
 * @property {number} [requestTimeoutMs]
 * @property {number} [connectTimeoutMs]
 * @property {number} [backoffInitialMs]
 * @property {number} [backoffMaxMs]
 * @property {number} [maxUrls]  configured plus learned from hellos (16)
 * @property {number} [incomingQueue]  signals waiting to be read; the oldest is dropped past it (256)
 * @property {boolean} [learnUrls]
 * @property {(signal: IncomingSignal) => void} [onSignal]
 * @property {Logger} [log]
 */

export const SignalClientState = Object.freeze({
  NEW: 'new',
  CONNECTING: 'connecting', // dialing a node, reading its hello, announcing
  CONNECTED: 'connected', // announced on a live connection
  BACKOFF: 'backoff', // every URL failed in a row; waiting before the next round
  CLOSING: 'closing',
  CLOSED: 'closed',
});

/** A browser peer's connection to the signaling mesh: announce, look up peers, exchange signals. */
/** Never re-announce more often than this, whatever a node advertises (nodes allow one announcement a second per peer). */
export const MIN_RENEW_MS = 1_000;

export class SignalClient {
  /**
   * Use `await SignalClient.create(...)`, which also connects.
   * @param {Identity} identity
   * @param {SignalClientConfig} config
   */
  constructor(identity, config) {
    const urls = [...new Set(config.urls ?? [])];
    if (!urls.length) throw new SignalClientError('give at least one signaling URL (ws://HOST:PORT)');
    for (const url of urls) {
      if (typeof url !== 'string' || !URL_RE.test(url)) {
        throw new SignalClientError(`${JSON.stringify(url)} is not a signaling URL: give ws://HOST:PORT`);
      }
    }
    this.identity = identity;
    this.config = {
      serves: [],
      throughputMilli: 0,
      kvFreeTokens: 0,
      ttlMs: 120_000,
      reannounceMs: 40_000,
      requestTimeoutMs: 5_000,
      connectTimeoutMs: 5_000,
      backoffInitialMs: 100,
      backoffMaxMs: 10_000,
      maxUrls: 16,
      incomingQueue: 256,
      learnUrls: true,
      ...config,
    };
    const { ttlMs, reannounceMs } = this.config;
    if (!(ttlMs >= MIN_TTL_MS && ttlMs <= MAX_TTL_MS)) throw new SignalClientError(`ttlMs = ${ttlMs} is outside [${MIN_TTL_MS}, ${MAX_TTL_MS}]`);
    if (!(reannounceMs > 0 && reannounceMs < ttlMs)) throw new SignalClientError(`reannounceMs must be between 0 and ttlMs`);
    /** @type {Logger} */
    this.log = config.log ?? console;
    /** @type {string[]} */
    this.urlList = urls;
    this.urlIndex = 0;
    /** @type {string} */
    this.state = SignalClientState.NEW;
    /** @type {Link | null} */
    this.link = null;
    this.connected = new Flag();
    this.stopped = new Flag();
    this.seq = 0;
    this.nextId = 1;
    this.lastError = 'not tried yet';
    /** @type {IncomingSignal[]} */
    this.incoming = [];
    /** @type {((s: IncomingSignal | null) => void)[]} */
    this.readers = [];
    /** @type {Promise<void> | null} */
    this.manager = null;
    /** Signals are verified one after another, so they are delivered in the order they came. */
    this.verifying = Promise.resolve();
    this.verifyingCount = 0;
  }

  /**
   * Start connecting; with `wait`, return once announced or throw SignalClientError.
   * @param {Identity} identity
   * @param {SignalClientConfig} config
   * @param {{wait?: boolean}} [options]
   */
  static async create(identity, config, { wait = true } = {}) {
    const client = new SignalClient(identity, config);
    client.manager = client.run().catch((err) => {
      client.lastError = `connection manager failed: ${err}`;
      client.log.warn(`signal client ${client.peerId.slice(0, 8)}: ${client.lastError}`);
    });
    if (wait) {
      try {
        await client.waitConnected(client.config.connectTimeoutMs);
      } catch (err) {
        await client.close();
        throw err;
      }
    }
    return client;
  }

  get peerId() {
    return this.identity.peerId;
  }

  /** The node this client is announced on now, if any. */
  get url() {
    return this.link !== null && this.connected.isSet ? this.link.url : null;
  }

  /** Every URL this client may fail over to: configured, then learned. */
  get urls() {
    return [...this.urlList];
  }

  /** @param {string} state */
  setState(state) {
    if (state !== this.state) {
      this.log.info(`signal client ${this.peerId.slice(0, 8)}: ${this.state} -> ${state}`);
      this.state = state;
    }
  }

  checkOpen() {
    if (this.state === SignalClientState.CLOSING || this.state === SignalClientState.CLOSED) {
      throw new SignalClientError(`signal client is ${this.state}; create a new one`);
    }
  }

  /** @param {number} [timeoutMs] wait until announced on some node */
  async waitConnected(timeoutMs = this.config.connectTimeoutMs) {
    this.checkOpen();
    await withTimeout(this.connected.wait(), timeoutMs, () => new SignalClientError(
      `no signaling node reachable among ${this.urlList.join(', ')}: ${this.lastError}`,
    ));
    this.checkOpen();
  }

  // --- public API -----------------------------------------------------------------------------------

  /**
   * Peers serving any block of `model` in `[start, end)`, verified, best first.
   * @param {string} model
   * @param {number} start
   * @param {number} end
   * @param {{limit?: number}} [options]
   */
  async lookup(model, start, end, { limit = 32 } = {}) {
    const reply = await this.call({ type: 'lookup', model, start, end, limit });
    return verifyPeers(reply.peers, model, start, end, { limit, log: this.log });
  }

  /**
   * Send SDP or ICE to `peerId`, signed end to end; RemoteSignalingError (`unknown_peer`) if no node knows it.
   * @param {string} peerId
   * @param {{[key: string]: unknown}} payload
   */
  async sendSignal(peerId, payload) {
    if (typeof peerId !== 'string' || !PEER_ID_RE.test(peerId)) throw new MessageError('to must be a peer id');
    if (!isPlainObject(payload)) throw new MessageError('payload must be a JSON object');
    const size = canonicalBytes(payload).length;
    if (size > MAX_SIGNAL_PAYLOAD_BYTES) {
      throw new MessageError(`payload is ${size} bytes of canonical JSON, over ${MAX_SIGNAL_PAYLOAD_BYTES}`, { code: 'too_large' });
    }
    const body = { from: this.peerId, to: peerId, ts_ms: Date.now(), payload };
    const sig = await this.identity.signBody(SIGNAL_CONTEXT, body);
    await this.call({ type: 'signal', ...body, sig });
  }

  /**
   * The next verified signal for this peer; SignalClientError once the client is closed.
   * @returns {Promise<IncomingSignal>}
   */
  async recvSignal() {
    const queued = this.incoming.shift();
    if (queued !== undefined) return queued;
    if (this.state === SignalClientState.CLOSED) throw new SignalClientError('signal client is closed');
    const next = await new Promise((resolve) => this.readers.push(resolve));
    if (next === null) throw new SignalClientError('signal client is closed');
    return next;
  }

  /** Verified signals for this peer, until the client closes. @returns {AsyncGenerator<IncomingSignal>} */
  async *signals() {
    while (true) {
      try {
        yield await this.recvSignal();
      } catch (err) {
        if (err instanceof SignalClientError) return;
        throw err;
      }
    }
  }

  /**
   * Change what this peer announces, and announce it now if connected.
   * @param {{serves?: ServedSpan[], throughputMilli?: number, kvFreeTokens?: number}} changes
   */
  async update(changes) {
    this.config = { ...this.config, ...changes };
    const link = this.link;
    if (link !== null && this.connected.isSet) {
      try {
        await this.announce(link);
      } catch (err) {
        if (!(err instanceof LinkLost)) throw err; // the next connection announces the new values anyway
      }
    }
  }

  /** Say `bye` (so the directory forgets this peer now, not at expiry), then close. */
  async close() {
    if (this.state === SignalClientState.CLOSING || this.state === SignalClientState.CLOSED) return;
    // Signed, so that sibling nodes withdraw our announcement too, with our next seq: it supersedes
    // every announcement signed before it, one still in flight included. Signed before stopping, which
    // closes the link.
    if (this.seq !== 0) this.seq = Math.max(this.seq + 1, Date.now());
    const bye = this.seq === 0 ? { type: 'bye' } : { type: 'bye', seq: this.seq, sig: await this.identity.signBody(BYE_CONTEXT, byeBody(this.peerId, this.seq)) };
    if (this.state === SignalClientState.CLOSING || this.state === SignalClientState.CLOSED) return;
    const link = this.connected.isSet ? this.link : null;
    this.setState(SignalClientState.CLOSING);
    this.stopped.set();
    if (link !== null) {
      try {
        await link.request(bye, this.nextId++, 1_000);
      } catch {
        // leaving anyway: without bye the entry lives until it expires
      }
      link.close();
    }
    this.link?.close();
    this.link = null;
    await this.manager;
    this.setState(SignalClientState.CLOSED);
    this.connected.set(); // wakes every waiting request, which then sees the closed state
    for (const wake of this.readers.splice(0)) wake(null);
  }

  // --- requests -------------------------------------------------------------------------------------

  /**
   * Send a request on the live connection, riding over failovers until `requestTimeoutMs`.
   * @param {{[key: string]: unknown, type: string}} message
   */
  async call(message) {
    this.checkOpen();
    const deadline = Date.now() + this.config.requestTimeoutMs;
    const timeout = () => new SignalClientError(
      `${message.type} got no answer within ${this.config.requestTimeoutMs} ms ` +
        `(state ${this.state}; last error: ${this.lastError})`,
    );
    while (true) {
      await withTimeout(this.connected.wait(), deadline - Date.now(), timeout);
      this.checkOpen();
      const link = this.link;
      if (link === null) {
        await new Promise((resolve) => setTimeout(resolve, 10));
        continue;
      }
      try {
        return await link.request(message, this.nextId++, deadline - Date.now());
      } catch (err) {
        if (!(err instanceof LinkLost)) throw err;
        if (Date.now() >= deadline) throw timeout();
        await new Promise((resolve) => setTimeout(resolve, 10)); // the manager notices and fails over
      }
    }
  }

  /** @param {Link} link */
  async announce(link) {
    const cfg = this.config;
    const now = Date.now();
    this.seq = Math.max(this.seq + 1, now);
    const body = {
      v: PROTOCOL_VERSION,
      peer_id: this.peerId,
      kind: 'browser',
      seq: this.seq,
      issued_ms: now,
      expires_ms: now + Math.round(cfg.ttlMs),
      serves: cfg.serves.map(({ model, start, end }) => ({ model, start, end })),
      throughput_milli: cfg.throughputMilli,
      kv_free_tokens: cfg.kvFreeTokens,
      signaling: [link.url],
    };
    parseAnnouncement(body); // refuse a bad configuration here, with a readable message
    const message = {
      type: 'announce',
      body,
      sig: await this.identity.signBody(ANNOUNCE_CONTEXT, body),
      proof: await this.identity.signBody(AUTH_CONTEXT, { node_id: link.nodeId, nonce: link.nonce }),
    };
    await link.request(message, this.nextId++, cfg.requestTimeoutMs);
  }

  // --- the connection manager -----------------------------------------------------------------------

  /** Connect, serve, fail over; back off once every URL has failed in a row. Runs until closed. */
  async run() {
    let backoff = this.config.backoffInitialMs;
    let failures = 0;
    while (!this.stopped.isSet) {
      const url = this.urlList[this.urlIndex % this.urlList.length];
      this.setState(SignalClientState.CONNECTING);
      let link;
      try {
        link = await this.open(url);
      } catch (err) {
        if (this.stopped.isSet) return;
        this.lastError = `${url}: ${err instanceof Error ? err.message || err.name : err}`;
        this.log.info(`signaling node ${url} failed: ${this.lastError}`);
        this.urlIndex += 1;
        failures += 1;
        if (failures >= this.urlList.length) {
          this.setState(SignalClientState.BACKOFF);
          await this.sleep(backoff * (0.5 + Math.random()));
          backoff = Math.min(backoff * 2, this.config.backoffMaxMs);
          failures = 0;
        }
        continue;
      }
      if (this.stopped.isSet) {
        link.close();
        return;
      }
      backoff = this.config.backoffInitialMs;
      failures = 0;
      this.link = link;
      this.setState(SignalClientState.CONNECTED);
      this.connected.set();
      try {
        await this.keepAnnounced(link);
      } finally {
        this.connected.clear();
        if (this.link === link) this.link = null;
        link.close();
      }
      this.lastError = `${url}: connection lost`;
      this.urlIndex += 1; // fail over: try the next node first
    }
  }

  /**
   * Dial `url`, read its hello, announce.
   * @param {string} url
   */
  async open(url) {
    const ws = new WebSocket(url);
    const link = new Link(url, ws, (m) => this.enqueueSignal(m), this.log);
    try {
      await withTimeout(Promise.race([link.helloSeen.wait(), this.stopped.wait()]), this.config.connectTimeoutMs,
        () => new SignalClientError(`no hello from ${url} within ${this.config.connectTimeoutMs} ms`));
      if (link.hello === null) throw new LinkLost(`${url} closed before its hello`);
      this.readHello(link, link.hello);
      await this.announce(link);
    } catch (err) {
      link.close();
      throw err;
    }
    return link;
  }

  /**
   * @param {Link} link
   * @param {{[key: string]: unknown}} hello
   */
  readHello(link, hello) {
    if (hello.type !== 'hello') throw new MessageError('the node did not start with a hello message');
    if (hello.protocol !== PROTOCOL_VERSION) throw new MessageError(`node speaks protocol ${hello.protocol}, not ${PROTOCOL_VERSION}`);
    const { node_id: nodeId, nonce } = hello;
    if (typeof nodeId !== 'string' || typeof nonce !== 'string' || !(nonce.length > 0 && nonce.length <= 128)) {
      throw new MessageError('hello lacks a node_id or a nonce');
    }
    link.nodeId = nodeId;
    link.nonce = nonce;
    // The node closes a peer connection silent for `limits.idle_ms`: re-announce within half of it when
    // that is sooner than our own period (never more often than MIN_RENEW_MS). The first message (the
    // announcement) goes at once, well within `limits.first_message_ms`.
    link.renewMs = this.config.reannounceMs;
    const limits = hello.limits;
    const idleMs = limits !== null && typeof limits === 'object' ? /** @type {{[key: string]: unknown}} */ (limits).idle_ms : undefined;
    if (typeof idleMs === 'number' && Number.isInteger(idleMs) && idleMs > 0) {
      link.renewMs = Math.min(link.renewMs, Math.max(MIN_RENEW_MS, idleMs / 2));
    }
    if (this.config.learnUrls && Array.isArray(hello.siblings)) {
      for (const sibling of hello.siblings.slice(0, 16)) {
        if (typeof sibling !== 'string' || !URL_RE.test(sibling) || this.urlList.includes(sibling)) continue;
        if (this.urlList.length >= this.config.maxUrls) break;
        this.urlList.push(sibling);
      }
    }
  }

  /**
   * Re-announce every `reannounceMs` until the connection drops or the client closes.
   * @param {Link} link
   */
  async keepAnnounced(link) {
    while (true) {
      await Promise.race([link.closed.wait(), this.stopped.wait(), this.sleep(link.renewMs || this.config.reannounceMs)]);
      if (link.closed.isSet || this.stopped.isSet) return;
      try {
        await this.announce(link);
      } catch (err) {
        if (err instanceof RemoteSignalingError) this.log.warn(`re-announcing on ${link.url} failed: ${err.message}`);
        else return;
      }
    }
  }

  /**
   * A sleep that ends early when the client closes.
   * @param {number} ms
   */
  sleep(ms) {
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const done = new Promise((resolve) => {
      timer = setTimeout(resolve, ms);
    });
    return Promise.race([done, this.stopped.wait()]).finally(() => clearTimeout(timer));
  }

  /**
   * Chain a received `signal` behind those still being verified; past `incomingQueue` it is dropped.
   * @param {{[key: string]: unknown}} message
   */
  enqueueSignal(message) {
    if (this.verifyingCount >= this.config.incomingQueue) {
      this.log.warn('too many signals waiting for verification: dropped one');
      return;
    }
    this.verifyingCount += 1;
    this.verifying = this.verifying
      .then(() => this.onSignal(message))
      .catch((err) => this.log.warn(`dropping a signal: ${err}`))
      .finally(() => {
        this.verifyingCount -= 1;
      });
  }

  /**
   * Verify a `signal` (fields, recipient, signature, freshness) and queue it for the reader.
   * @param {{[key: string]: unknown}} message
   */
  async onSignal(message) {
    const body = { from: message.from, to: message.to, ts_ms: message.ts_ms, payload: message.payload };
    try {
      if (typeof body.from !== 'string' || !PEER_ID_RE.test(body.from)) throw new MessageError('from is not a peer id');
      if (body.to !== this.peerId) throw new MessageError('signal is not for this peer');
      if (typeof body.ts_ms !== 'number' || !Number.isInteger(body.ts_ms)) throw new MessageError('ts_ms is not an integer');
      if (!isPlainObject(body.payload)) throw new MessageError('payload must be a JSON object');
      await verifyBody(body.from, SIGNAL_CONTEXT, body, message.sig);
      if (Math.abs(Date.now() - body.ts_ms) > MAX_SIGNAL_AGE_MS) throw new MessageError('signal timestamp is too far off: a replay?', { code: 'expired' });
    } catch (err) {
      if (!(err instanceof CoreError)) throw err;
      this.log.warn(`dropping a signal: ${err.message}`);
      return;
    }
    /** @type {IncomingSignal} */
    const signal = { sender: body.from, payload: body.payload, tsMs: body.ts_ms };
    this.config.onSignal?.(signal);
    const reader = this.readers.shift();
    if (reader) {
      reader(signal);
      return;
    }
    if (this.incoming.length >= this.config.incomingQueue) {
      this.incoming.shift();
      this.log.warn('incoming signal queue full: dropped the oldest');
    }
    this.incoming.push(signal);
  }
}


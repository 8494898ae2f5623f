// @ts-check
/**
 * The browser node's assembly, shared by the contribute page (`BrowserNode`), the embed worker (through
 * `BrowserNode`) and the chat page (`MeshClient`): identity, the node's Web Lock, the ledger, the
 * signal client, the WebRTC transport, and ledger gossip through signaling, handled here once.
 *
 * Roles plug onto it: serving a span (`BrowserNode` with its `SpanServer`) and being a client
 * (`MeshClient.attach`). A role gets the frames of the links it claims and hears of links opening and
 * closing; a role that serves lets offers through (a core with no serving role passes on WebRTC answers
 * only, as a client completes the links it offered).
 *
 * Public API (kept small: web/src/embed/worker.js reaches it through `BrowserNode`):
 * - `new BrowserNodeCore({identity, ledger, transportConfig, createTransport, log})`
 * - `lock(name)` takes the node's Web Lock (one node per IndexedDB database), released by `release()`
 * - `useLedger(ledgerOrPromise)`; `ledger` (null until it resolves)
 * - `connect(signalUrls, {serves})` makes the signal client and starts reading its signals
 * - `openTransport()` makes the transport (once); `plug(role)` / `unplug(role)`
 * - `gossipNow(model, numLayers, fanout)`, `gossipRounds({...})`: ledger gossip rounds through signaling
 * - `close()` stops the networking; `release({closeLedger})` also closes the ledger and frees the lock
 *
 * No DOM: the transport is injected (`createTransport`), so the core also runs in a Web Worker.
 */

import { SignalClient } from '../signaling/client.js';
import { acquireNodeLock } from '../storage/db.js';
import { BrowserTransport } from '../transport/peer.js';
import { LEDGER_SIGNAL, SIGNALING_GOSSIP_BYTES, WEBRTC_SIGNAL } from '../protocol/constants.js';

export { LEDGER_SIGNAL, WEBRTC_SIGNAL };
/** Ledger gossip messages through signaling waiting to be answered; past it new ones are dropped. */
export const MAX_PENDING_GOSSIP = 64;

/** @typedef {{info(msg: string): void, warn(msg: string): void}} Logger */
/** @typedef {{remoteId: string, send(frame: import('../protocol/wire.js').Frame): Promise<void>}} FrameLink */

/**
 * What a transport must offer the node: `BrowserTransport`, or a relay to the page for a Worker.
 * @typedef {object} NodeTransport
 * @property {(signal: {sender: string, payload: {[key: string]: unknown}}) => Promise<unknown>} handleSignal
 * @property {{remoteId: string, state: string}[]} links
 * @property {() => void} close
 * @property {BrowserTransport['connect']} [connect]  offering links (a client role needs it)
 */

/**
 * The hooks a transport calls: the node's side of `BrowserTransport`'s constructor options.
 * @typedef {object} TransportHooks
 * @property {(peerId: string, payload: {[key: string]: unknown}) => Promise<void>} sendSignal
 * @property {(link: any, frame: import('../protocol/wire.js').Frame) => void} onFrame
 * @property {(link: any) => void} onLinkClosed
 * @property {(link: any) => void} onLinkOpen
 * @property {{log: Logger} & Omit<import('../transport/peer.js').TransportConfig, 'log'>} config  the ICE settings
 */

/**
 * Something plugged onto the core: a span server or a mesh client.
 * @typedef {object} NodeRole
 * @property {boolean} serves  whether offers from other peers are answered for this role
 * @property {(link: any) => boolean} claims  whether a frame from `link` is this role's
 * @property {(link: any, frame: import('../protocol/wire.js').Frame) => void} onFrame
 * @property {(link: any) => void} [onLinkClosed]
 * @property {(link: any) => void} [onLinkOpen]
 */

/**
 * What the core needs of a ledger for gossip through signaling: `BrowserLedger`.
 * @typedef {object} GossipLedger
 * @property {(peer: string, options?: {maxMessageBytes?: number}) => Promise<unknown>} gossipStart
 * @property {(peer: string, message: unknown, options?: {maxMessageBytes?: number}) => Promise<unknown[]>} gossipReceive
 * @property {() => Promise<unknown>} [close]
 */

/**
 * What the core needs of a signal client: `SignalClient`.
 * @typedef {object} CoreSignal
 * @property {string | null} [url]
 * @property {(peerId: string, payload: {[key: string]: unknown}) => Promise<void>} sendSignal
 * @property {() => AsyncGenerator<import('../signaling/client.js').IncomingSignal>} signals
 * @property {SignalClient['lookup']} lookup
 * @property {SignalClient['update']} update
 * @property {() => Promise<void>} close
 */

/** @param {unknown} err */
const message = (err) => (err instanceof Error ? err.message : String(err));

/** One browser node's identity, lock, ledger, signal client, transport and signaling gossip. */
export class BrowserNodeCore {
  /** @type {NodeRole[]} */
  #roles = [];
  /** @type {Promise<GossipLedger | null>} */
  #ledgerReady = Promise.resolve(null);
  /** @type {Promise<void> | null} */
  #pump = null;
  /** @type {Promise<void>} gossip through signaling is answered one message after another */
  #gossipQueue = Promise.resolve();
  #gossipPending = 0;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #gossipTimer = null;
  #closed = false;
  /** @type {Promise<void> | null} */
  #closing = null;

  /**
   * @param {object} options
   * @param {import('../identity/identity.js').Identity} options.identity
   * @param {GossipLedger | Promise<GossipLedger | null> | null} [options.ledger]
   * @param {import('../transport/peer.js').TransportConfig} [options.transportConfig]  e.g. `transportConfigFor(pageConfig)`
   * @param {(hooks: TransportHooks) => NodeTransport} [options.createTransport]
   * @param {(identity: import('../identity/identity.js').Identity, options: {urls: string[], serves: any[], log: Logger}) =>
   *   Promise<CoreSignal>} [options.createSignal]  default: `SignalClient.create`
   * @param {Logger} [options.log]
   */
  constructor({ identity, ledger = null, transportConfig = {}, createTransport, createSignal, log = console }) {
    this.identity = identity;
    this.transportConfig = transportConfig;
    this.createTransport = createTransport ?? ((hooks) => new BrowserTransport(hooks));
    this.createSignal = createSignal ?? ((id, options) => SignalClient.create(id, options));
    this.log = log;
    /** @type {GossipLedger | null} the ledger once it is open */
    this.ledger = null;
    /** @type {CoreSignal | null} */
    this.signal = null;
    /** @type {NodeTransport | null} */
    this.transport = null;
    /** @type {(() => void) | null} releases the node lock */
    this.unlock = null;
    this.useLedger(ledger);
  }

  get peerId() {
    return this.identity.peerId;
  }

  /**
   * Take the node's Web Lock: one node per IndexedDB database, as two writers of one ledger would fork
   * it, and signaling binds a peer id to one connection. Released by `release()`.
   * @param {string} name  e.g. `ai4all-node/${db.name}`
   */
  async lock(name) {
    this.unlock ??= await acquireNodeLock(name);
  }

  /**
   * The ledger that pays and is paid, or a promise of it (null: none; the page goes on without one).
   * @param {GossipLedger | Promise<GossipLedger | null> | null} ledger
   */
  useLedger(ledger) {
    const ready = Promise.resolve(ledger).catch(() => null);
    this.#ledgerReady = ready;
    ready.then((l) => {
      if (this.#ledgerReady === ready) this.ledger = l;
    });
    if (ledger !== null && !(ledger instanceof Promise)) this.ledger = ledger;
  }

  /** The ledger once it is open (null if there is none or it failed). */
  ledgerReady() {
    return this.#ledgerReady;
  }

  /**
   * Connect to the signaling nodes and start handing their signals on, until `close()`.
   * @param {string[]} urls
   * @param {{serves?: import('../signaling/client.js').ServedSpan[]}} [options]
   */
  async connect(urls, { serves = [] } = {}) {
    if (this.#closed) throw new Error('the node is closed');
    if (this.signal !== null) return this.signal;
    this.signal = await this.createSignal(this.identity, { urls, serves, log: this.log });
    this.#pump = this.#pumpSignals(this.signal);
    return this.signal;
  }

  /** The transport, made on first call (its frames go to the plugged roles). */
  openTransport() {
    if (this.transport !== null) return this.transport;
    if (this.#closed) throw new Error('the node is closed');
    this.transport = this.createTransport({
      sendSignal: (peerId, payload) => this.sendSignal(peerId, payload),
      onFrame: (link, frame) => {
        const role = this.#roles.find((r) => r.claims(link));
        if (role !== undefined) role.onFrame(link, frame);
        else this.log.warn(`frame from ${String(link.remoteId).slice(0, 8)} on a link no role holds: dropped`);
      },
      onLinkClosed: (link) => {
        for (const role of this.#roles) role.onLinkClosed?.(link);
      },
      onLinkOpen: (link) => {
        for (const role of this.#roles) role.onLinkOpen?.(link);
      },
      config: /** @type {TransportHooks['config']} */ ({ log: this.log, ...this.transportConfig }),
    });
    return this.transport;
  }

  /**
   * Plug a role onto the core; a claiming role plugged earlier gets a link's frames first.
   * @param {NodeRole} role
   */
  plug(role) {
    if (!this.#roles.includes(role)) this.#roles.push(role);
  }

  /** @param {NodeRole} role */
  unplug(role) {
    this.#roles = this.#roles.filter((r) => r !== role);
  }

  /**
   * @param {string} peerId
   * @param {{[key: string]: unknown}} payload
   */
  async sendSignal(peerId, payload) {
    if (this.signal === null || this.#closed) throw new Error('the node is stopped');
    await this.signal.sendSignal(peerId, payload);
  }

  /**
   * Hand WebRTC signals to the transport and answer ledger gossip, until the signal client closes.
   * @param {CoreSignal} signal
   */
  async #pumpSignals(signal) {
    for await (const incoming of signal.signals()) {
      const kind = incoming.payload.kind;
      if (kind === LEDGER_SIGNAL) {
        const msg = incoming.payload.msg;
        if (this.#gossipPending >= MAX_PENDING_GOSSIP) {
          this.log.warn(`ledger gossip from ${incoming.sender.slice(0, 8)} dropped: ${MAX_PENDING_GOSSIP} messages are waiting`);
          continue;
        }
        this.#gossipPending++;
        this.#gossipQueue = this.#gossipQueue
          .then(() => this.#gossipReceived(incoming.sender, msg))
          .finally(() => this.#gossipPending--);
      } else if (kind === WEBRTC_SIGNAL) {
        this.#webrtcSignal(incoming);
      } else {
        this.log.info(`ignoring a signal of kind ${JSON.stringify(String(kind)).slice(0, 40)} from ${incoming.sender.slice(0, 8)}`);
      }
    }
  }

  /** @param {import('../signaling/client.js').IncomingSignal} incoming */
  #webrtcSignal(incoming) {
    const serves = this.#roles.some((r) => r.serves);
    if (this.transport === null) {
      // Not loaded yet (nothing is announced, so only a stale lookup sends this): the offerer times out.
      this.log.info(`ignoring an offer from ${incoming.sender.slice(0, 8)}: not serving yet`);
      return;
    }
    if (!serves && incoming.payload.type !== 'answer') {
      this.log.info(`ignoring a ${String(incoming.payload.type).slice(0, 20)} from ${incoming.sender.slice(0, 8)}: this node serves nothing`);
      return;
    }
    // Paused servers' links are still answered: an OPEN then gets session_refused at once, not a timeout.
    this.transport.handleSignal(incoming).catch((err) => this.log.warn(`refused an offer: ${message(err)}`));
  }

  /**
   * One gossip message through signaling: answered with what the ledger's gossip session replies.
   * @param {string} sender
   * @param {unknown} msg
   */
  async #gossipReceived(sender, msg) {
    const ledger = await this.#ledgerReady;
    if (ledger === null || this.#closed) return;
    try {
      const replies = await ledger.gossipReceive(sender, msg);
      for (const reply of replies) await this.sendSignal(sender, { kind: LEDGER_SIGNAL, msg: reply });
    } catch (err) {
      this.log.warn(`ledger gossip from ${sender.slice(0, 8)} dropped: ${message(err)}`);
    }
  }

  /**
   * Open a gossip round through signaling with up to `fanout` random peers of the model; resolve to how many.
   * @param {string} model
   * @param {number} numLayers
   * @param {number} fanout
   */
  async gossipNow(model, numLayers, fanout) {
    const ledger = this.ledger;
    const signal = this.signal;
    if (ledger === null || signal === null || this.#closed) return 0;
    const found = await signal.lookup(model, 0, numLayers, { limit: 64 });
    const peers = [...new Set(found.map((a) => a.peer_id))].filter((p) => p !== this.peerId);
    const chosen = shuffle(peers).slice(0, fanout);
    for (const peer of chosen) {
      const msg = await ledger.gossipStart(peer, { maxMessageBytes: SIGNALING_GOSSIP_BYTES });
      if (msg) await this.sendSignal(peer, { kind: LEDGER_SIGNAL, msg: /** @type {any} */ (msg) });
    }
    return chosen.length;
  }

  /**
   * Gossip rounds every `intervalMs` on average (jittered), until `close()`.
   * @param {{model: string, numLayers: number, intervalMs: number, fanout: number}} options
   */
  gossipRounds({ model, numLayers, intervalMs, fanout }) {
    const next = () => {
      if (this.#closed) return;
      this.#gossipTimer = setTimeout(async () => {
        try {
          await this.gossipNow(model, numLayers, fanout);
        } catch (err) {
          this.log.info(`ledger gossip round failed: ${message(err)}`);
        }
        next();
      }, intervalMs * (0.5 + Math.random()));
    };
    next();
  }

  /** Stop the networking: gossip rounds, the transport, the signal client (with a bye). Idempotent. */
  close() {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close() {
    this.#closed = true;
    if (this.#gossipTimer !== null) clearTimeout(this.#gossipTimer);
    this.#gossipTimer = null;
    this.transport?.close();
    const signal = this.signal;
    if (signal !== null) {
      try {
        await signal.close();
      } catch (err) {
        this.log.warn(`closing the signal client: ${message(err)}`);
      }
      await this.#pump;
    }
    await this.#gossipQueue;
  }

  /**
   * `close()`, then (with `closeLedger`) close the ledger, then release the node lock.
   * @param {{closeLedger?: boolean}} [options]
   */
  async release({ closeLedger = false } = {}) {
    await this.close();
    if (closeLedger && this.ledger?.close) {
      try {
        await this.ledger.close();
      } catch (err) {
        this.log.warn(`closing the ledger: ${message(err)}`);
      }
    }
    this.unlock?.();
    this.unlock = null;
  }
}

/**
 * @template T
 * @param {T[]} items
 */
function shuffle(items) {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

// @ts-check
/**
 * The browser's mesh client: routes a generation through peers, keeping the prompt and the logits on
 * this machine. The mirror of `python_peer/mesh_client.py` (docs/mesh.md).
 *
 * The client holds the embed shard and the head shard (`web/src/runtime/shard.js`); only hidden states
 * leave it. It finds peers through signaling (`SignalClient.lookup`), picks the cheapest route over
 * layer boundaries (`routing.js`), offers a WebRTC link to each peer (`BrowserTransport.connect`),
 * pushes its own ledger log to a peer before its first session there, opens a session on each hop of
 * a route at once (OPEN / FORWARD / CLOSE frames of `web/src/protocol/wire.js`; ./route_open.js) and
 * runs each step down the chain.
 *
 * When a hop fails (its link closes, it misses two pings in a row, it answers with an ERROR, with
 * hidden states of the wrong shape or dtype, with NaN/Inf, or not in time) the client bans that peer
 * for a while, routes around it, and replays to the replacement the hidden states it had sent to that
 * span (one FORWARD with the REPLAY flag), which rebuilds the KV cache there; the step then goes on,
 * and the tokens come out as if nothing had failed.
 *
 * The ledger exchange on the links is `ClientExchange`'s (`web/src/ledger/client_exchange.js`, its messages
 * built and parsed by `python_peer/core/ledger_exchange.py`): the client pushes its own log to a peer
 * when it connects, and before each OPEN writes a hold paying that peer for the session in its log (a
 * route's holds together), pushes the log again (only what follows the `held` the peer last answered)
 * and names the hold in OPEN (`python_peer/core/holds.py`); after CLOSE, a peer that keeps a ledger proposes a receipt, which the
 * client checks, countersigns with its `BrowserLedger` and returns; once a receipt is recorded, the
 * client runs a ledger gossip exchange with that peer over the same link (at most once per peer per
 * `gossipEveryMs`, in the background). With `ledger: null` the client pushes nothing and countersigns
 * nothing (browser span servers that keep no ledger serve it; native peers answer OPEN with
 * `payment_required`, raised as MeshError).
 *
 * The client is a role plugged onto the browser node assembly (`MeshClient.attach(core, ...)`, with
 * `BrowserNodeCore` of web/src/node/core.js); `MeshClient.connect` makes an assembly of its own.
 *
 * When a session closes, its hops are spot-checked (./spot_check.js, the rule of the native client):
 * a peer caught lying is unpaid for that session, accused in an `evidence` entry of the ledger, and
 * never routed again (`spotChecks.caught`).
 *
 * The module is split along its seams: one hop and its tensors in ./hop.js, a session's steps and
 * failover in ./session.js, opening a route's hops in ./route_open.js, the errors in ./errors.js (all
 * re-exported here).
 *
 * Every frame sent is counted per peer in `traffic` (hidden-state frames apart from control frames),
 * which the chat page's privacy indicator shows.
 */

import { AI4AllError, FrameType } from '../protocol/wire.js';
import { OPEN_TIMEOUT_MS } from '../protocol/constants.js';
import { BrowserNodeCore } from '../node/core.js';
import { modelContext } from '../node/span_choice.js';
import { LinkClosedError, LinkTimeoutError, TransportError } from '../transport/peer.js';
import { EmbedRunner, HeadRunner, ShardRunner } from '../runtime/shard.js';
import { BanList, NoRouteError, chooseRoute, routeLiftingBans } from './routing.js';
import { RpcClient } from './rpc.js';
import { ClientExchange } from '../ledger/client_exchange.js';
import { BadAnswerError, MeshError, isHopFailure } from './errors.js';
import { ATTENTION_MASK, HIDDEN_IN, HIDDEN_OUT, POSITION_IDS, concatInputs, positionIdsFor } from './hop.js';
import { MeshSession } from './session.js';
import { SpotChecks } from './spot_check.js';

export { ATTENTION_MASK, BadAnswerError, HIDDEN_IN, HIDDEN_OUT, MeshError, MeshSession, POSITION_IDS, concatInputs, isHopFailure, positionIdsFor };

/**
 * @typedef {object} ClientConfig  times in ms
 * @property {number} requestTimeoutMs
 * @property {number} connectTimeoutMs  a link that is not open this long after the offer is a hop failure
 * @property {number} openTimeoutMs  OPEN does no compute: a peer that leaves it unanswered this long is
 *   routed around (`OPEN_TIMEOUT_MS`, as the native client's `open_timeout_s`; at most `requestTimeoutMs`)
 * @property {number} closeTimeoutMs
 * @property {number} banSeconds
 * @property {number} maxFailovers  per session
 * @property {number} lookupCacheMs  signaling allows a connection 20 messages a second
 * @property {number} [probeEveryMs]
 * @property {number} [probeTimeoutMs]
 * @property {number | null} gossipEveryMs  ledger gossip on a session link, per peer; null: never
 * @property {number} gossipMaxRequests  GOSSIP requests of one exchange
 * @property {boolean} verifyAnswers  every answer must carry its peer's signature (docs/wire.md)
 * @property {Partial<import('./spot_check.js').SpotCheckPolicy> | null} spotChecks  the spot checks' policy
 *   (`spot_check.js`; `{}`: the default); null: no spot checks. Only verified answers are checked.
 */

/** @type {Readonly<ClientConfig>} */
export const DEFAULT_CLIENT_CONFIG = Object.freeze({
  requestTimeoutMs: 60_000,
  connectTimeoutMs: 15_000,
  openTimeoutMs: OPEN_TIMEOUT_MS,
  closeTimeoutMs: 5_000,
  banSeconds: 60,
  maxFailovers: 8,
  lookupCacheMs: 2_000,
  gossipEveryMs: 30_000,
  gossipMaxRequests: 16,
  verifyAnswers: true, // an unsigned or wrongly signed answer is a hop failure (docs/wire.md)
  spotChecks: Object.freeze({}), // the default policy (docs/trust.md)
});

/** @typedef {import('../ledger/client_exchange.js').ClientLedger} ClientLedger  what the client needs of a ledger: `BrowserLedger` */
/** @typedef {import('../node/core.js').Logger} Logger */
/** @typedef {import('../signaling/client.js').SignalClient} SignalClient */
/** @typedef {import('../transport/peer.js').BrowserTransport} BrowserTransport */
/** @typedef {import('./hop.js').Hidden} Hidden */
/** @typedef {import('./hop.js').StepInputs} StepInputs */

/**
 * What was sent to one peer, for the privacy indicator.
 * @typedef {object} PeerTraffic
 * @property {string} peerId
 * @property {number} hiddenFrames  FORWARD frames: hidden states with their mask and positions
 * @property {number} hiddenBytes
 * @property {number} tokenPositions  token positions whose hidden states were sent
 * @property {number} controlFrames  OPEN, CLOSE, ledger GOSSIP
 * @property {number} controlBytes
 * @property {string[]} spans  the spans this peer served us, e.g. "1-3"
 */

/**
 * The verified bytes of one file of a shard, e.g. `fetchShardCached` of web/src/storage/db.js; called
 * once per listed file, with the entry's `file`, `sha256` and `bytes` those of that file.
 * @typedef {(url: URL, entry: import('../runtime/shard.js').ShardEntry,
 *   onProgress?: import('../runtime/shard.js').ProgressCallback) => Promise<Uint8Array>} ShardBytes
 */

/**
 * Load the embed and head shards of `manifest`: what runs on this machine.
 * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} manifest
 * @param {string} baseUrl
 * @param {import('../runtime/shard.js').LoadOptions} [load]
 * @param {ShardBytes} [shardBytes]  default: `ShardRunner.load` (fetch and check)
 */
async function loadLocalShards(manifest, baseUrl, load, shardBytes) {
  const entryOf = (/** @type {string} */ kind) => {
    const entry = manifest.shards.find((s) => s.kind === kind);
    if (entry === undefined) throw new MeshError(`the manifest of ${manifest.model.name} lists no ${kind} shard`);
    return entry;
  };
  const loadShard = async (/** @type {import('../runtime/shard.js').ShardEntry} */ entry) => {
    if (shardBytes === undefined) return ShardRunner.load(baseUrl, entry, load);
    // every file of the shard (its .onnx, then its .data if any), each as an entry of its own
    /** @type {import('../runtime/shard.js').FetchFile} */
    const fetchFile = (url, listed, onProgress) => shardBytes(url, { ...entry, ...listed }, onProgress);
    return ShardRunner.load(baseUrl, entry, { ...load, fetchFile });
  };
  const embed = new EmbedRunner(await loadShard(entryOf('embed')), manifest);
  const head = new HeadRunner(await loadShard(entryOf('head')), manifest);
  return { embed, head };
}

/** Everything a user's browser needs to generate through the mesh. */
export class MeshClient {
  /** @type {Map<string, RpcClient>} */
  #rpcs = new Map();
  /** @type {Map<string, Promise<RpcClient>>} */
  #connecting = new Map();
  /** @type {WeakMap<import('../transport/peer.js').BrowserLink, RpcClient>} */
  #byLink = new WeakMap();
  /** @type {Map<string, {at: number, announcements: import('../signaling/client.js').Announcement[]}>} */
  #lookups = new Map();

  /**
   * Use `MeshClient.connect(...)`, which builds the signal client and transport; this constructor takes
   * them ready (the transport's `onFrame` and `onLinkClosed` must call `deliver` and `linkClosed`).
   * @param {object} options
   * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} options.manifest
   * @param {{lookup: SignalClient['lookup'], peerId: string}} options.signal
   * @param {{connect: BrowserTransport['connect']}} options.transport
   * @param {EmbedRunner} options.embed
   * @param {HeadRunner} options.head
   * @param {ClientLedger | null} [options.ledger]
   * @param {Partial<ClientConfig>} [options.config]
   * @param {Logger} [options.log]
   */
  constructor({ manifest, signal, transport, embed, head, ledger = null, config = {}, log = console }) {
    this.manifest = manifest;
    this.signal = signal;
    this.transport = transport;
    this.embedRunner = embed;
    this.headRunner = head;
    this.ledger = ledger;
    this.config = { ...DEFAULT_CLIENT_CONFIG, ...config };
    this.log = log;
    this.numLayers = Number(manifest.model.config.num_layers);
    if (!Number.isInteger(this.numLayers) || this.numLayers < 1) throw new MeshError(`manifest num_layers ${manifest.model.config.num_layers} is not a positive integer`);
    /** the most positions the model takes (a session's `maxLength` at most), or null when unknown */
    this.context = modelContext(manifest.model.config);
    this.bans = new BanList(this.config.banSeconds);
    /** @type {Map<string, number>} measured round trips in seconds */
    this.rtts = new Map();
    /** @type {Map<string, PeerTraffic>} */
    this.traffic = new Map();
    /** @type {Set<(traffic: PeerTraffic) => void>} */
    this.trafficListeners = new Set();
    /** @type {{peerId: string, error: string, at: number}[]} the latest failures, newest last */
    this.failures = [];
    /** @type {{peerId: string, recorded: string}[]} receipts countersigned and recorded by their peer */
    this.receipts = [];
    this.closed = false;
    /** @type {SpotChecks | null} this client's spot checks: each peer's passes, the peers it caught */
    this.spotChecks = this.config.spotChecks === null ? null : new SpotChecks(this.config.spotChecks);
    /** The ledger exchange on this client's links: push on connect, receipts at close, gossip. */
    this.exchange = new ClientExchange({
      ledger,
      send: (rpc, frame, timeoutMs) => this.call(rpc, frame, timeoutMs),
      config: this.config,
      log,
      closed: () => this.closed,
      badAnswer: (message, cause) => new BadAnswerError(message, { cause }),
    });
  }

  /**
   * Load the embed and head shards and plug a client onto a node assembly (`BrowserNodeCore` of
   * web/src/node/core.js) that is connected to signaling: the client offers links through the core's
   * transport and gets the frames of the links it opened; ledger gossip through signaling is the core's.
   * `close()` unplugs the client and leaves the core as it is.
   * @param {import('../node/core.js').BrowserNodeCore} core
   * @param {object} options
   * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} options.manifest
   * @param {string} options.baseUrl  the folder of the model's manifest.json
   * @param {ClientLedger | null} [options.ledger]  default: the core's ledger
   * @param {Partial<ClientConfig>} [options.config]
   * @param {import('../runtime/shard.js').LoadOptions} [options.load]  download progress, runtime options
   * @param {ShardBytes} [options.shardBytes]
   *   the verified bytes of a shard (e.g. `fetchShardCached` of web/src/storage/db.js); default: `fetchShard`
   */
  static async attach(core, { manifest, baseUrl, ledger, config, load, shardBytes }) {
    const signal = core.signal;
    if (signal === null) throw new MeshError('the node is not connected to signaling: call core.connect first');
    const clientLedger = ledger === undefined ? /** @type {ClientLedger | null} */ (/** @type {unknown} */ (core.ledger)) : ledger;
    if (clientLedger !== null && clientLedger.peerId !== core.peerId) {
      throw new MeshError(`the ledger belongs to ${clientLedger.peerId.slice(0, 12)}, the identity is ${core.peerId.slice(0, 12)}`);
    }
    const { embed, head } = await loadLocalShards(manifest, baseUrl, load, shardBytes);
    const transport = /** @type {{connect: BrowserTransport['connect']}} */ (core.openTransport());
    const lookup = /** @type {SignalClient['lookup']} */ ((...args) => signal.lookup(...args));
    const client = new MeshClient({
      manifest,
      signal: { lookup, peerId: core.peerId },
      transport,
      embed,
      head,
      ledger: clientLedger,
      config,
      log: core.log,
    });
    /** @type {import('../node/core.js').NodeRole} */
    const role = {
      serves: false,
      claims: (link) => client.holds(link),
      onFrame: (link, frame) => client.deliver(link, frame),
      onLinkClosed: (link) => client.linkClosed(link),
    };
    core.plug(role);
    client.#unplug = () => core.unplug(role);
    return client;
  }

  /**
   * Connect to signaling through a node assembly of its own (identity, signal client, transport; no
   * lock), load the embed and head shards, and make the client; `close()` closes that assembly too.
   * @param {object} options
   * @param {import('../identity/identity.js').Identity} options.identity  the ledger's identity too
   * @param {string[]} options.signalUrls
   * @param {import('../runtime/shard.js').Manifest & {model: {name: string}}} options.manifest
   * @param {string} options.baseUrl  the folder of the model's manifest.json
   * @param {ClientLedger | null} [options.ledger]
   * @param {Partial<ClientConfig>} [options.config]
   * @param {import('../transport/peer.js').TransportConfig} [options.transportConfig]  e.g. the page
   *   configuration's ICE settings, `transportConfigFor(pageConfig)` (default: loopback only, no STUN/TURN)
   * @param {import('../runtime/shard.js').LoadOptions} [options.load]  download progress, runtime options
   * @param {ShardBytes} [options.shardBytes]  as `attach`
   * @param {Logger} [options.log]
   */
  static async connect({ identity, signalUrls, manifest, baseUrl, ledger = null, config, transportConfig, load, shardBytes, log = console }) {
    if (ledger !== null && ledger.peerId !== identity.peerId) {
      throw new MeshError(`the ledger belongs to ${ledger.peerId.slice(0, 12)}, the identity is ${identity.peerId.slice(0, 12)}`);
    }
    const gossipLedger = /** @type {import('../node/core.js').GossipLedger | null} */ (/** @type {unknown} */ (ledger));
    const core = new BrowserNodeCore({ identity, ledger: gossipLedger, transportConfig, log });
    try {
      await core.connect(signalUrls);
      const client = await MeshClient.attach(core, { manifest, baseUrl, ledger, config, load, shardBytes });
      client.ownsCore = core;
      return client;
    } catch (err) {
      await core.close();
      throw err;
    }
  }

  /** @type {import('../node/core.js').BrowserNodeCore | null} the assembly `connect` made, closed with the client */
  ownsCore = null;
  /** @type {() => void} */
  #unplug = () => {};

  get model() {
    return this.manifest.model.name;
  }

  /**
   * Whether `link` is one this client opened (its frames are this client's).
   * @param {unknown} link
   */
  holds(link) {
    return typeof link === 'object' && link !== null && this.#byLink.has(/** @type {any} */ (link));
  }

  /**
   * A frame from a link (the transport's `onFrame`).
   * @param {import('../transport/peer.js').BrowserLink} link
   * @param {import('../protocol/wire.js').Frame} frame
   */
  deliver(link, frame) {
    const rpc = this.#byLink.get(link);
    if (rpc !== undefined) rpc.deliver(frame);
    else this.log.warn(`frame from ${link.remoteId.slice(0, 8)} on a link this client did not open: dropped`);
  }

  /**
   * A link closed (the transport's `onLinkClosed`): its calls fail now.
   * @param {import('../transport/peer.js').BrowserLink} link
   */
  linkClosed(link) {
    this.#byLink.get(link)?.fail(new LinkClosedError(`link to ${link.remoteId.slice(0, 16)} closed: ${link.closeReason}`));
  }

  /**
   * Send a request and count what it carried.
   * @param {RpcClient} rpc
   * @param {import('../protocol/wire.js').FrameInit} frame
   * @param {number} timeoutMs
   * @param {number} [positions]  token positions of hidden states in the frame
   */
  call(rpc, frame, timeoutMs, positions = 0) {
    return rpc.call(frame, timeoutMs, (bytes) => this.#count(rpc.remoteId, frame.type, bytes, positions));
  }

  /**
   * @param {string} peerId
   * @param {number} type
   * @param {number} bytes
   * @param {number} positions
   */
  #count(peerId, type, bytes, positions) {
    let entry = this.traffic.get(peerId);
    if (entry === undefined) {
      entry = { peerId, hiddenFrames: 0, hiddenBytes: 0, tokenPositions: 0, controlFrames: 0, controlBytes: 0, spans: [] };
      this.traffic.set(peerId, entry);
    }
    if (type === FrameType.FORWARD) {
      entry.hiddenFrames++;
      entry.hiddenBytes += bytes;
      entry.tokenPositions += positions;
    } else {
      entry.controlFrames++;
      entry.controlBytes += bytes;
    }
    for (const listener of this.trafficListeners) listener(entry);
  }

  /**
   * The link to `peerId`, connected (its round trip measured, our log pushed) on first use.
   * @param {string} peerId
   * @returns {Promise<RpcClient>}
   */
  async rpc(peerId) {
    const open = this.#rpcs.get(peerId);
    if (open !== undefined && !open.closed) return open;
    const pending = this.#connecting.get(peerId);
    if (pending !== undefined) return pending;
    const connecting = this.#connect(peerId).finally(() => this.#connecting.delete(peerId));
    this.#connecting.set(peerId, connecting);
    return connecting;
  }

  /** @param {string} peerId */
  async #connect(peerId) {
    if (this.closed) throw new MeshError('the mesh client is closed');
    const link = await this.#reach(peerId);
    const rpc = new RpcClient(link, { probeEveryMs: this.config.probeEveryMs, probeTimeoutMs: this.config.probeTimeoutMs });
    this.#byLink.set(link, rpc);
    this.#rpcs.set(peerId, rpc);
    try {
      await link.ping(this.config.connectTimeoutMs);
      if (link.rttMs !== null) this.rtts.set(peerId, link.rttMs / 1000);
    } catch (err) {
      this.log.info(`no round trip measured for ${peerId.slice(0, 8)}: ${err instanceof Error ? err.message : err}`);
    }
    if (this.ledger !== null) {
      // The peer judges our balance from the entries it holds: make sure it holds ours (or drop the link,
      // so that the next use connects and pushes again).
      try {
        await this.exchange.push(rpc);
      } catch (err) {
        if (this.#rpcs.get(peerId) === rpc) this.#rpcs.delete(peerId);
        rpc.close();
        throw err;
      }
    }
    return rpc;
  }

  /**
   * Offer a link to `peerId`, bounded by `connectTimeoutMs` whatever the transport does. Any failure to
   * reach a routed peer is a hop failure (routed around, as natively): signaling refusing the offer
   * (`unknown_peer`: the peer or its node is gone while its announcement lingers), no answer, a channel
   * that never opens. A link that opens after we gave up is closed.
   * @param {string} peerId
   * @returns {Promise<import('../transport/peer.js').BrowserLink>}
   */
  async #reach(peerId) {
    const timeoutMs = this.config.connectTimeoutMs;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    let gaveUp = false;
    const connecting = this.transport.connect(peerId, { timeoutMs });
    const expired = new Promise((_, reject) => {
      timer = setTimeout(() => {
        gaveUp = true;
        reject(new LinkTimeoutError(`peer ${peerId.slice(0, 16)}: no link within ${timeoutMs} ms (the transport did not give up)`));
      }, timeoutMs + 1_000); // the transport's own bound fires first; this one catches a transport that ignores it
    });
    connecting.then(
      (late) => {
        if (gaveUp) late.close('connected after the client gave up on it');
      },
      () => {},
    );
    try {
      return await Promise.race([connecting, expired]);
    } catch (err) {
      if (isHopFailure(err) || !(err instanceof AI4AllError) || err instanceof MeshError) throw err;
      // e.g. a SignalingError from a transport that does not wrap it: still this hop failing, not the chat
      throw new TransportError(`peer ${peerId.slice(0, 16)} cannot be reached: ${err.name}: ${err.message}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Start a ledger gossip exchange with `peerId` in the background (`ClientExchange.gossipSoon`: at
   * most once per peer per `gossipEveryMs`); its promise, or null. Failures are logged, never thrown.
   * @param {string} peerId
   * @param {RpcClient} rpc
   * @returns {Promise<void> | null}
   */
  gossipSoon(peerId, rpc) {
    return this.exchange.gossipSoon(peerId, rpc);
  }

  /** Wait for the gossip exchanges under way. */
  gossipSettled() {
    return this.exchange.gossipSettled();
  }

  /**
   * Peers serving blocks in `[start, end)`; lookups are cached briefly, as signaling rate-limits them.
   * @param {number} start
   * @param {number} end
   * @returns {Promise<import('./routing.js').Candidate[]>}
   */
  async candidates(start, end) {
    const key = `${start}-${end}`;
    const cached = this.#lookups.get(key);
    let announcements;
    if (cached !== undefined && performance.now() - cached.at < this.config.lookupCacheMs) {
      announcements = cached.announcements;
    } else {
      announcements = await this.signal.lookup(this.model, start, end);
      this.#lookups.set(key, { at: performance.now(), announcements });
    }
    /** @type {import('./routing.js').Candidate[]} */
    const found = [];
    for (const ann of announcements) {
      if (ann.peer_id === this.signal.peerId) continue;
      for (const served of ann.serves) {
        if (served.model === this.model && served.start < end && start < served.end) {
          found.push({
            peerId: ann.peer_id,
            start: served.start,
            end: served.end,
            throughput: ann.throughput_milli / 1000,
            kvFreeTokens: ann.kv_free_tokens,
            rttS: this.rtts.get(ann.peer_id) ?? null,
          });
        }
      }
    }
    return found;
  }

  /**
   * The cheapest route avoiding banned peers; if only banned peers can cover the span, try them again,
   * the one that failed longest ago first (a peer that failed once under load, or was restarted, may be
   * fine now; a dead one fails again and counts).
   * @param {number} start
   * @param {number} end
   * @param {number} tokens
   */
  async route(start, end, tokens) {
    // The ledger's reputations (python_peer/core/reputation.py): excluded peers are never routed,
    // suspects only when no one else covers their blocks; peers this client caught lying, never.
    const ledger = /** @type {{reputations?: () => Promise<Record<string, string>>} | null} */ (this.ledger);
    const levels = { ...(typeof ledger?.reputations === 'function' ? await ledger.reputations() : {}) };
    for (const peerId of this.spotChecks?.caught.keys() ?? []) levels[peerId] = 'excluded';
    const candidates = (await this.candidates(start, end)).filter((c) => levels[c.peerId] !== 'excluded');
    const trusted = candidates.filter((c) => levels[c.peerId] === undefined);
    try {
      return chooseRoute(trusted, start, end, { banned: this.bans, tokensNeeded: tokens });
    } catch (err) {
      if (!(err instanceof NoRouteError)) throw err;
    }
    try {
      return chooseRoute(candidates, start, end, { banned: this.bans, tokensNeeded: tokens });
    } catch (err) {
      if (!(err instanceof NoRouteError) || !candidates.some((c) => this.bans.banned(c.peerId))) throw err;
      this.#lookups.delete(`${start}-${end}`);
      const fresh = (await this.candidates(start, end)).filter((c) => levels[c.peerId] !== 'excluded');
      return routeLiftingBans(fresh, start, end, this.bans, tokens);
    }
  }

  /**
   * Open a session through the mesh for `batch` sequences of at most `maxLength` tokens.
   * @param {number} batch
   * @param {number} maxLength
   */
  async open(batch, maxLength) {
    if (this.closed) throw new MeshError('the mesh client is closed');
    const session = new MeshSession(this, batch, maxLength);
    await session.start();
    return session;
  }

  /**
   * Hidden states of token ids, on this machine.
   * @param {BigInt64Array} ids
   * @param {number} batch
   * @param {BigInt64Array} positions
   * @returns {Promise<Hidden>}
   */
  embed(ids, batch, positions) {
    return this.embedRunner.run(ids, [batch, ids.length / batch], positions);
  }

  /**
   * Logits of hidden states, on this machine.
   * @param {Hidden} hidden
   */
  head(hidden) {
    return this.headRunner.run(hidden);
  }

  /**
   * @param {string} peerId
   * @param {unknown} err
   */
  noteFailure(peerId, err) {
    this.bans.ban(peerId);
    const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    this.failures.push({ peerId, error, at: Date.now() });
    if (this.failures.length > 50) this.failures.shift();
    this.log.warn(`peer ${peerId.slice(0, 16)} failed (${error}); routing around it`);
  }

  /** Close every link and unplug from the node assembly (closing it when `connect` made it). */
  async close() {
    this.closed = true;
    for (const rpc of this.#rpcs.values()) rpc.close();
    this.#rpcs.clear();
    this.#unplug();
    if (this.ownsCore !== null) await this.ownsCore.close();
  }

  /** Free the embed and head shards too. */
  async release() {
    await this.close();
    await this.embedRunner.release();
    await this.headRunner.release();
  }
}


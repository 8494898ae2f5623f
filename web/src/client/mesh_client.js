// @ts-check
/**
 * The browser's mesh client: routes a generation through peers, keeping the prompt and the logits on
 * this machine. The mirror of `python_peer/mesh_client.py` (docs/mesh.md).
 *
 * The client holds the embed shard and the head shard (`web/src/runtime/shard.js`); only hidden states
 * leave it. It finds peers through signaling (`SignalClient.lookup`), picks the cheapest route over
 * layer boundaries (`routing.js`), offers a WebRTC link to each peer (`BrowserTransport.connect`),
 * pushes its own ledger log to a peer before its first session there, opens a session on each hop
 * (OPEN / FORWARD / CLOSE frames of `web/src/protocol/wire.js`) and runs each step down the chain.
 *
 * When a hop fails (its link closes, it misses two pings in a row, it answers with an ERROR, with
 * hidden states of the wrong shape or dtype, with NaN/Inf, or not in time) the client bans that peer
 * for a while, routes around it, and replays to the replacement the hidden states it had sent to that
 * span (one FORWARD with the REPLAY flag), which rebuilds the KV cache there; the step then goes on,
 * and the tokens come out as if nothing had failed.
 *
 * After CLOSE, a peer that keeps a ledger proposes a receipt; the client checks and countersigns it
 * with its `BrowserLedger` (`web/src/ledger/ledger.js`) and sends it back (GOSSIP `{kind: 'receipt'}`).
 * Once a receipt is recorded, the client runs a ledger gossip exchange with that peer over the same link
 * (GOSSIP `{kind: 'gossip', msg}` answered `{replies: [...]}`, at most once per peer per `gossipEveryMs`,
 * in the background): both sides pull the entries they lack, third parties' included.
 * With `ledger: null` the client pushes nothing and countersigns nothing (browser span servers that keep
 * no ledger serve it; native peers answer OPEN with `payment_required`, raised as MeshError).
 *
 * Every frame sent is counted per peer in `traffic` (hidden-state frames apart from control frames),
 * which the chat page's privacy indicator shows.
 */

import {
  AI4AllError,
  FrameFlags,
  FrameType,
  NO_FLAGS,
  PaymentRequiredError,
  RemoteError,
  TensorError,
  WireError,
  checkFinite,
  frameTensor,
  tensorToFloat32,
} from '../protocol/wire.js';
import { BrowserNodeCore } from '../node/core.js';
import { LinkClosedError, TransportError } from '../transport/peer.js';
import { EmbedRunner, HeadRunner, ShardRunner } from '../runtime/shard.js';
import { BanList, NoRouteError, chooseRoute } from './routing.js';
import { RpcClient, hex } from './rpc.js';
import { CHANNEL_GOSSIP_BYTES } from '../protocol/constants.js';

export const HIDDEN_IN = 'hidden_states';
export const HIDDEN_OUT = 'hidden_states_out';
export const ATTENTION_MASK = 'attention_mask';
export const POSITION_IDS = 'position_ids';

/** Generation through the mesh could not go on (no route left, too many failures, refused). */
export class MeshError extends AI4AllError {}

/** A peer answered with something unusable (Python's PeerError on the client): routed around. */
export class BadAnswerError extends AI4AllError {}

/**
 * What counts as a hop failing: the client routes around these; anything else is a bug and propagates.
 * @param {unknown} err
 */
export function isHopFailure(err) {
  return (
    err instanceof LinkClosedError ||
    err instanceof TransportError ||
    err instanceof RemoteError ||
    err instanceof WireError ||
    err instanceof BadAnswerError
  );
}

/**
 * @typedef {object} ClientConfig  times in ms
 * @property {number} requestTimeoutMs
 * @property {number} connectTimeoutMs
 * @property {number} closeTimeoutMs
 * @property {number} banSeconds
 * @property {number} maxFailovers  per session
 * @property {number} lookupCacheMs  signaling allows a connection 20 messages a second
 * @property {number} [probeEveryMs]
 * @property {number} [probeTimeoutMs]
 * @property {number | null} gossipEveryMs  ledger gossip on a session link, per peer; null: never
 * @property {number} gossipMaxRequests  GOSSIP requests of one exchange
 */

/** @type {Readonly<ClientConfig>} */
export const DEFAULT_CLIENT_CONFIG = Object.freeze({
  requestTimeoutMs: 60_000,
  connectTimeoutMs: 15_000,
  closeTimeoutMs: 5_000,
  banSeconds: 60,
  maxFailovers: 8,
  lookupCacheMs: 2_000,
  gossipEveryMs: 30_000,
  gossipMaxRequests: 16,
});

/**
 * What the client needs of a ledger: helper A's `BrowserLedger`.
 * @typedef {object} ClientLedger
 * @property {string} peerId
 * @property {(limit?: number) => Promise<unknown[]> | unknown[]} ownEntries
 * @property {(receipt: unknown, serverSig: unknown, terms: {server: string, session: string, model: string,
 *   start: number, end: number, tokens: number}) => Promise<{receipt: unknown, clientSig: string}>} countersign
 * @property {(peer: string, options: {maxMessageBytes: number}) => Promise<unknown>} [gossipStart]
 *   a `summary` opening a gossip round with `peer` (or null)
 * @property {(peer: string, message: unknown, options: {maxMessageBytes: number}) => Promise<unknown[]>} [gossipReceive]
 *   the replies to one gossip message from `peer`
 */

/** @typedef {import('../node/core.js').Logger} Logger */
/** @typedef {import('../signaling/client.js').SignalClient} SignalClient */
/** @typedef {import('../transport/peer.js').BrowserTransport} BrowserTransport */
/** @typedef {{data: Float32Array, dims: number[]}} Hidden */
/** @typedef {{hidden: Hidden, mask: BigInt64Array, positions: BigInt64Array}} StepInputs */

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
 * Concatenate step inputs along the sequence axis (for replay).
 * @param {StepInputs[]} parts
 * @returns {StepInputs | null}
 */
export function concatInputs(parts) {
  if (!parts.length) return null;
  const [batch, , width] = parts[0].hidden.dims;
  const total = parts.reduce((n, p) => n + p.hidden.dims[1], 0);
  const hidden = new Float32Array(batch * total * width);
  const mask = new BigInt64Array(batch * total);
  const positions = new BigInt64Array(batch * total);
  let offset = 0;
  for (const part of parts) {
    const seq = part.hidden.dims[1];
    for (let b = 0; b < batch; b++) {
      hidden.set(part.hidden.data.subarray(b * seq * width, (b + 1) * seq * width), (b * total + offset) * width);
      mask.set(part.mask.subarray(b * seq, (b + 1) * seq), b * total + offset);
      positions.set(part.positions.subarray(b * seq, (b + 1) * seq), b * total + offset);
    }
    offset += seq;
  }
  return { hidden: { data: hidden, dims: [batch, total, width] }, mask, positions };
}

/**
 * Positions of new tokens: the count of real tokens before each one (left padding gets position 0),
 * Python's `chain.position_ids_for`.
 * @param {BigInt64Array} mask  [batch, seq] of the new tokens
 * @param {number} batch
 * @param {number[]} pastCounts  real tokens already in the session, per row
 */
export function positionIdsFor(mask, batch, pastCounts) {
  const seq = mask.length / batch;
  const positions = new BigInt64Array(mask.length);
  for (let b = 0; b < batch; b++) {
    let count = BigInt(pastCounts[b]);
    for (let i = 0; i < seq; i++) {
      count += mask[b * seq + i];
      const p = count - 1n;
      positions[b * seq + i] = p < 0n ? 0n : p;
    }
  }
  return positions;
}

/** One peer serving one span within a session, and what we sent it (for replay). */
class Hop {
  /**
   * @param {MeshClient} client
   * @param {string} peerId
   * @param {number} start
   * @param {number} end
   * @param {RpcClient} rpc
   */
  constructor(client, peerId, start, end, rpc) {
    this.client = client;
    this.peerId = peerId;
    this.start = start;
    this.end = end;
    this.rpc = rpc;
    this.session = crypto.getRandomValues(new Uint8Array(16));
    this.nextStep = 0;
    /** @type {StepInputs[]} */
    this.history = [];
    /** token positions sent and answered with usable hidden states: what the receipt may claim */
    this.tokens = 0;
  }

  /**
   * @param {StepInputs} inputs
   * @param {number} flags
   * @returns {Promise<Hidden>}
   */
  async forward({ hidden, mask, positions }, flags = NO_FLAGS) {
    const [batch, seq] = hidden.dims;
    const frame = {
      type: FrameType.FORWARD,
      session: this.session,
      step: this.nextStep,
      flags,
      tensors: [
        { name: HIDDEN_IN, dtype: /** @type {const} */ ('float32'), shape: hidden.dims, data: hidden.data },
        { name: ATTENTION_MASK, dtype: /** @type {const} */ ('int64'), shape: [batch, seq], data: mask },
        { name: POSITION_IDS, dtype: /** @type {const} */ ('int64'), shape: [batch, seq], data: positions },
      ],
    };
    const answer = await this.client.call(this.rpc, frame, this.client.config.requestTimeoutMs, batch * seq);
    const out = readHidden(answer, this.peerId, hidden.dims);
    this.tokens += batch * seq;
    this.nextStep++;
    return out;
  }
}

/**
 * The `hidden_states_out` of an answer: a finite float tensor of the shape sent, else a hop failure.
 * @param {import('../protocol/wire.js').Frame} answer
 * @param {string} peerId
 * @param {number[]} dims
 * @returns {Hidden}
 */
function readHidden(answer, peerId, dims) {
  const tensor = frameTensor(answer, HIDDEN_OUT); // MetadataError (a WireError) when missing
  if (tensor.dtype === 'int64') throw new TensorError(`peer ${peerId.slice(0, 16)} returned ${HIDDEN_OUT} as int64, not float`);
  checkFinite(tensor); // NonFiniteError
  if (tensor.shape.length !== dims.length || tensor.shape.some((d, i) => d !== dims[i])) {
    throw new BadAnswerError(
      `peer ${peerId.slice(0, 16)} returned hidden states [${tensor.shape.join(', ')}] for [${dims.join(', ')}]`,
    );
  }
  return { data: tensorToFloat32(tensor).slice(), dims: [...dims] };
}

/**
 * The verified bytes of a shard, e.g. `fetchShardCached` of web/src/storage/db.js.
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
    const base = new URL(String(baseUrl), globalThis.location?.href);
    if (!base.pathname.endsWith('/')) base.pathname += '/';
    const bytes = await shardBytes(new URL(entry.file, base), entry, load?.onProgress);
    return ShardRunner.fromBytes(bytes, entry, load?.runtime);
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
  /** @type {Map<string, number>} peer id -> when the last gossip exchange with it started */
  #gossiped = new Map();
  /** @type {Set<Promise<void>>} */
  #gossipRuns = new Set();

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
   * @param {import('../signaling/client.js').Identity} options.identity  the ledger's identity too
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
    const link = await this.transport.connect(peerId, { timeoutMs: this.config.connectTimeoutMs });
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
        const entries = await this.ledger.ownEntries();
        const session = crypto.getRandomValues(new Uint8Array(16));
        const meta = { kind: 'push', entries: /** @type {any} */ (entries) };
        await this.call(rpc, { type: FrameType.GOSSIP, session, step: 0, meta }, this.config.requestTimeoutMs);
      } catch (err) {
        if (this.#rpcs.get(peerId) === rpc) this.#rpcs.delete(peerId);
        rpc.close();
        throw err;
      }
    }
    return rpc;
  }

  /**
   * Start a ledger gossip exchange with `peerId` in the background, unless one started less than
   * `gossipEveryMs` ago (or the ledger cannot gossip); its promise, or null. Failures are logged, never thrown.
   * @param {string} peerId
   * @param {RpcClient} rpc
   * @returns {Promise<void> | null}
   */
  gossipSoon(peerId, rpc) {
    const every = this.config.gossipEveryMs;
    const ledger = this.ledger;
    if (ledger === null || every === null || !ledger.gossipStart || !ledger.gossipReceive || this.closed) return null;
    const now = performance.now();
    const last = this.#gossiped.get(peerId);
    if (last !== undefined && now - last < every) return null;
    this.#gossiped.set(peerId, now);
    const run = this.gossipExchange(peerId, rpc).then(
      (sent) => this.log.info(`ledger gossip with ${peerId.slice(0, 8)}: ${sent} requests`),
      (err) => this.log.warn(`ledger gossip with ${peerId.slice(0, 8)} failed: ${err instanceof Error ? `${err.name}: ${err.message}` : err}`),
    );
    const tracked = run.finally(() => this.#gossipRuns.delete(tracked));
    this.#gossipRuns.add(tracked);
    return tracked;
  }

  /** Wait for the gossip exchanges under way. */
  async gossipSettled() {
    while (this.#gossipRuns.size) await Promise.all([...this.#gossipRuns]);
  }

  /**
   * Anti-entropy with a serving peer over its link (Python's `mesh_client.gossip_exchange`): send our
   * `summary` as a GOSSIP request `{kind: 'gossip', msg}`, feed each message of the answer
   * (`{replies: [...]}`) to our gossip session with the peer, send what that answers as new requests, and
   * stop when nothing is left or after `gossipMaxRequests`. Resolves to the number of requests sent.
   * @param {string} peerId
   * @param {RpcClient} rpc
   * @returns {Promise<number>}
   */
  async gossipExchange(peerId, rpc) {
    const ledger = this.ledger;
    if (ledger === null || !ledger.gossipStart || !ledger.gossipReceive) return 0;
    const options = { maxMessageBytes: CHANNEL_GOSSIP_BYTES };
    const first = await ledger.gossipStart(peerId, options);
    const queue = first === null || first === undefined ? [] : [first];
    let sent = 0;
    while (queue.length && sent < this.config.gossipMaxRequests) {
      if (this.closed) throw new MeshError('the mesh client is closed');
      const meta = { kind: 'gossip', msg: /** @type {any} */ (queue.shift()) };
      const session = crypto.getRandomValues(new Uint8Array(16));
      const answer = await this.call(rpc, { type: FrameType.GOSSIP, session, step: 0, meta }, this.config.requestTimeoutMs);
      sent++;
      const replies = answer.meta.replies;
      if (!Array.isArray(replies)) throw new BadAnswerError(`peer ${peerId.slice(0, 16)} answered a gossip request without a list of replies`);
      for (const reply of replies) queue.push(...(await ledger.gossipReceive(peerId, reply, options)));
    }
    if (queue.length) this.log.info(`ledger gossip with ${peerId.slice(0, 8)} stopped after ${sent} requests`);
    return sent;
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
   * The cheapest route avoiding banned peers; if only banned peers can cover the span, try them again
   * (a peer that failed once under load may be fine now; a dead one fails again and counts).
   * @param {number} start
   * @param {number} end
   * @param {number} tokens
   */
  async route(start, end, tokens) {
    const candidates = await this.candidates(start, end);
    try {
      return chooseRoute(candidates, start, end, { banned: this.bans, tokensNeeded: tokens });
    } catch (err) {
      if (!(err instanceof NoRouteError) || !candidates.some((c) => this.bans.banned(c.peerId))) throw err;
      this.#lookups.delete(`${start}-${end}`);
      return chooseRoute(await this.candidates(start, end), start, end, { tokensNeeded: tokens });
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

/** One generation's sessions along a route; `step` returns the logits of the last new token. */
export class MeshSession {
  /**
   * @param {MeshClient} client
   * @param {number} batch
   * @param {number} maxLength
   */
  constructor(client, batch, maxLength) {
    if (!Number.isInteger(batch) || batch < 1 || batch > 64) throw new MeshError(`batch ${batch} must be an integer in 1..64`);
    if (!Number.isInteger(maxLength) || maxLength < 1) throw new MeshError(`max_length ${maxLength} must be a positive integer`);
    this.client = client;
    this.batch = batch;
    this.maxLength = maxLength;
    /** @type {Hop[]} */
    this.hops = [];
    this.length = 0;
    /** @type {number[]} real tokens so far, per row */
    this.pastCounts = new Array(batch).fill(0);
    this.failovers = 0;
    this.lastFailure = '';
    this.closed = false;
    /** @type {Promise<void>} steps run one after another */
    this.queue = Promise.resolve();
  }

  /** @returns {[string, number, number][]} (peer id, start, end) of each hop */
  get route() {
    return this.hops.map((h) => [h.peerId, h.start, h.end]);
  }

  async start() {
    this.hops = await this.#openSpan(0, this.client.numLayers, []);
  }

  /**
   * Open sessions on a route over `[start, end)`; replay `replay` (inputs to `start`) through it.
   * @param {number} start
   * @param {number} end
   * @param {StepInputs[]} replay
   * @returns {Promise<Hop[]>}
   */
  async #openSpan(start, end, replay) {
    const client = this.client;
    for (;;) {
      let route;
      try {
        route = await client.route(start, end, this.batch * this.maxLength);
      } catch (err) {
        if (!(err instanceof NoRouteError)) throw err;
        const why = this.lastFailure ? `; last failure: ${this.lastFailure}` : '';
        throw new MeshError(`${err.message}${why}`, { cause: err });
      }
      /** @type {Hop[]} */
      const hops = [];
      let current = route[0].peerId;
      try {
        let inputs = concatInputs(replay);
        for (const cand of route) {
          current = cand.peerId;
          const hop = new Hop(client, cand.peerId, cand.start, cand.end, await client.rpc(cand.peerId));
          const meta = { model: client.model, start: hop.start, end: hop.end, batch: this.batch, max_length: this.maxLength };
          await client.call(hop.rpc, { type: FrameType.OPEN, session: hop.session, step: 0, meta }, client.config.requestTimeoutMs);
          hops.push(hop);
          const spans = client.traffic.get(hop.peerId)?.spans;
          if (spans !== undefined && !spans.includes(`${hop.start}-${hop.end}`)) spans.push(`${hop.start}-${hop.end}`);
          if (inputs !== null) {
            client.log.info(`replaying ${inputs.hidden.dims[1]} tokens to ${hop.peerId.slice(0, 8)} for blocks ${hop.start}-${hop.end}`);
            const out = await hop.forward(inputs, FrameFlags.REPLAY);
            hop.history.push(inputs);
            inputs = { hidden: out, mask: inputs.mask, positions: inputs.positions };
          }
        }
        return hops;
      } catch (err) {
        if (err instanceof PaymentRequiredError) {
          for (const hop of hops) await this.#closeHop(hop);
          throw new MeshError(`peer ${current.slice(0, 16)} refused to serve: ${err.message}`, { cause: err });
        }
        if (!isHopFailure(err)) throw err;
        this.#noteFailure(current, err);
        for (const hop of hops) await this.#closeHop(hop);
      }
    }
  }

  /**
   * @param {string} peerId
   * @param {unknown} err
   */
  #noteFailure(peerId, err) {
    this.failovers++;
    this.lastFailure = `peer ${peerId.slice(0, 16)}: ${err instanceof Error ? `${err.name}: ${err.message}` : err}`;
    this.client.noteFailure(peerId, err);
    if (this.failovers > this.client.config.maxFailovers) {
      throw new MeshError(`gave up after ${this.failovers} peer failures; last: ${this.lastFailure}`, { cause: err });
    }
  }

  /**
   * Feed new tokens (`ids` and `mask`: [batch, seq] flattened) and return the logits of the last one,
   * [batch, 1, vocab]. Steps run one after another.
   * @param {BigInt64Array} ids
   * @param {BigInt64Array} mask
   * @returns {Promise<Hidden>}
   */
  step(ids, mask) {
    const run = this.queue.then(() => this.#step(ids, mask));
    this.queue = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /**
   * @param {BigInt64Array} ids
   * @param {BigInt64Array} mask
   */
  async #step(ids, mask) {
    if (this.closed) throw new MeshError('this session is closed');
    if (!(ids instanceof BigInt64Array) || !(mask instanceof BigInt64Array) || ids.length !== mask.length || ids.length === 0 || ids.length % this.batch) {
      throw new MeshError(`ids and mask must be BigInt64Arrays of the same [${this.batch}, seq] shape`);
    }
    if (mask.some((m) => m !== 0n && m !== 1n)) throw new MeshError('attention mask values must be 0 or 1');
    const seq = ids.length / this.batch;
    if (this.length + seq > this.maxLength) throw new MeshError(`the session's max_length ${this.maxLength} would be exceeded`);
    const positions = positionIdsFor(mask, this.batch, this.pastCounts);
    let hidden = await this.client.embed(ids, this.batch, positions);
    let index = 0;
    while (index < this.hops.length) {
      const hop = this.hops[index];
      let out;
      try {
        out = await hop.forward({ hidden, mask, positions });
      } catch (err) {
        if (!isHopFailure(err)) throw err;
        this.#noteFailure(hop.peerId, err);
        await this.#closeHop(hop);
        const replacement = await this.#openSpan(hop.start, hop.end, hop.history);
        this.hops.splice(index, 1, ...replacement);
        continue;
      }
      hop.history.push({ hidden, mask, positions });
      hidden = out;
      index++;
    }
    this.length += seq;
    for (let b = 0; b < this.batch; b++) {
      for (let i = 0; i < seq; i++) this.pastCounts[b] += Number(mask[b * seq + i]);
    }
    const [batch, , width] = hidden.dims;
    const last = new Float32Array(batch * width);
    for (let b = 0; b < batch; b++) last.set(hidden.data.subarray((b * seq + seq - 1) * width, (b * seq + seq) * width), b * width);
    return this.client.head({ data: last, dims: [batch, 1, width] });
  }

  /**
   * Close the hop's session; countersign and return the receipt the peer proposes for it.
   * @param {Hop} hop
   */
  async #closeHop(hop) {
    if (hop.rpc.closed) return;
    const client = this.client;
    const timeout = client.config.closeTimeoutMs;
    try {
      const answer = await client.call(hop.rpc, { type: FrameType.CLOSE, session: hop.session, step: hop.nextStep }, timeout);
      const ledger = client.ledger;
      if (ledger === null || !('receipt' in answer.meta)) return;
      const serverSig = answer.meta.server_sig;
      const { receipt, clientSig } = await ledger.countersign(answer.meta.receipt, serverSig, {
        server: hop.peerId,
        session: hex(hop.session),
        model: client.model,
        start: hop.start,
        end: hop.end,
        tokens: hop.tokens,
      });
      const meta = { kind: 'receipt', receipt: /** @type {any} */ (receipt), client_sig: clientSig, server_sig: serverSig ?? null };
      const recorded = await client.call(hop.rpc, { type: FrameType.GOSSIP, session: hop.session, step: hop.nextStep + 1, meta }, timeout);
      client.receipts.push({ peerId: hop.peerId, recorded: String(recorded.meta.recorded) });
      // The receipt is in both logs: a good moment to exchange the rest, off the generation's path.
      client.gossipSoon(hop.peerId, hop.rpc);
    } catch (err) {
      // a failing peer, or a receipt the ledger refuses to sign: logged, and the generation stands
      if (!(err instanceof AI4AllError)) throw err;
      client.log.warn(`closing session on ${hop.peerId.slice(0, 8)}: ${err.name}: ${err.message}`);
    }
  }

  /** Close every hop's session (receipts included); later steps are refused. */
  async close() {
    if (this.closed) return;
    await this.queue;
    this.closed = true;
    await Promise.all(this.hops.map((h) => this.#closeHop(h)));
  }
}

// @ts-check
/**
 * The serving browser node: the node assembly (`BrowserNodeCore` of ./core.js: identity, lock, ledger,
 * signal client, WebRTC transport, ledger gossip through signaling) with a span server plugged on, the
 * mirror of `python_peer/node.py`'s `Peer` (docs/browser.md, docs/mesh.md). Used by the contribute page
 * and the embed worker.
 *
 * `BrowserNode.start(config, options)` takes the node's Web Lock (one node per IndexedDB database: two
 * tabs writing one ledger would fork it), loads (or makes) the node's Ed25519 identity and its ledger
 * from IndexedDB (mining the starter grant the first time), connects to the signaling nodes of the
 * page configuration (announcing nothing yet), picks the span to serve (the mesh's least-served block shard whose file fits the memory budget, as
 * `python_peer/block_selection.py`, unless one is given), downloads its shards through the IndexedDB
 * cache (progress, size and sha256 checked), loads them into onnxruntime-web, measures its throughput
 * and announces the span. It then answers WebRTC offers and serves inference sessions through
 * `SpanServer`, paid for through the ledger (payment check at OPEN, receipts at CLOSE), and gossips the
 * ledger through signaling (`{kind: 'ledger', msg}` signal payloads, as native peers do) in periodic
 * rounds with a few peers of the model, answering theirs (both through the core).
 *
 * `pause()` stops serving cleanly: new sessions are refused, the span is no longer announced, open
 * sessions run to their end (closed after `pauseGraceMs`, 30 s: their clients fail over) and the ledger
 * keeps gossiping. Links stay answered while paused, so an OPEN is refused at once, not timed out.
 * `resume()` announces again; `stop()` releases everything.
 *
 * No DOM: the transport is injected (`createTransport`), so the node also runs in a Web Worker with a
 * transport that relays frames to the page, which keeps the RTCPeerConnections.
 */

import { BrowserLedger } from '../ledger/ledger.js';
import { BlocksRunner, ShardRunner, shardTotalBytes } from '../runtime/shard.js';
import { acquireNodeLock, loadOrCreateIdentity } from '../storage/db.js';
import { ChunkErrorCode, FrameType } from '../protocol/constants.js';
import { errorFrame } from '../protocol/wire.js';
import { transportConfigFor } from '../transport/peer.js';
import { chooseBackend } from '../runtime/onnx.js';
import { MIB, NodeError, backendBudget, checkConfig, folder, numLayers } from './config.js';
import { ModelFiles } from './model_files.js';
import { trustPolicy } from '../runtime/publication.js';
import { BrowserNodeCore, LEDGER_SIGNAL, WEBRTC_SIGNAL } from './core.js';
import { checkSpanFits, describeNeed, gib, leastServedChoice, leastServedSpan, spanShards } from './span_choice.js';
import { SpanServer } from './span_server.js';

export { LEDGER_SIGNAL, WEBRTC_SIGNAL, MIB, NodeError, leastServedSpan, spanShards, acquireNodeLock };

const RATE_WINDOW_MS = 10_000;
const STATUS_THROTTLE_MS = 250;

/** @typedef {import('./config.js').PageConfig} PageConfig */
/** @typedef {import('./span_choice.js').SpanChoice} SpanChoice */
/** @typedef {import('./core.js').Logger} Logger */
/** @typedef {import('./core.js').NodeTransport} NodeTransport */
/** @typedef {import('./core.js').TransportHooks} TransportHooks */

/**
 * @typedef {object} NodeOptions
 * @property {IDBDatabase} db  from `openDatabase` (web/src/storage/db.js)
 * @property {number} [memoryBudgetMb]  weights of the span plus its KV caches (bounded by the backend: config.js)
 * @property {number | null} [kvBudgetMb]  a cap on the KV caches; null: what the budget leaves after the weights
 * @property {SpanChoice | null} [span]  null: the mesh's least-served block shard that fits
 * @property {string | null} [model]  a model name of `config.models`; null: the first
 * @property {import('../runtime/onnx.js').RuntimeOptions} [runtime]
 * @property {(hooks: TransportHooks) => NodeTransport} [createTransport]
 * @property {(event: {type: 'status', status: NodeStatus}) => void} [onEvent]
 * @property {Logger} [log]
 * @property {number} [gossipIntervalMs]  mean time between ledger gossip rounds
 * @property {number} [gossipFanout]  peers per round
 * @property {number} [housekeepingMs]  idle eviction, KV room re-announcement, balance refresh
 * @property {number} [pauseGraceMs]  how long `pause()` lets open sessions finish before closing them
 */

/**
 * @typedef {object} NodeStatus
 * @property {'starting' | 'downloading' | 'serving' | 'paused' | 'stopped' | 'error'} state
 * @property {string | null} error
 * @property {string | null} peerId
 * @property {string | null} model
 * @property {SpanChoice | null} span
 * @property {{loaded: number, total: number, cached: boolean}} download
 * @property {number} sessions
 * @property {number} tokensServed
 * @property {number} tokensPerSecond
 * @property {{peerId: string, state: string}[]} peers
 * @property {number | null} balance  units (1 credit = 1000 units)
 * @property {number | null} earned
 * @property {string[]} signaling  the URL of the signaling node this node is announced on, if any
 * @property {string | null} choice  why this span: what it needs against the budget the backend allows
 */

/** @param {unknown} err */
const message = (err) => (err instanceof Error ? err.message : String(err));

/** A node serving one span of one model from this browser. Use `await BrowserNode.start(...)`. */
export class BrowserNode {
  /** @type {NodeStatus['state']} */
  #state = 'starting';
  /** @type {string | null} */
  #error = null;
  /** @type {{loaded: number, total: number, cached: boolean}} */
  #download = { loaded: 0, total: 0, cached: false };
  /** @type {{balance: number | null, earned: number | null}} */
  #account = { balance: null, earned: null };
  /** @type {[number, number][]} (time ms, tokens served) samples for the rate */
  #samples = [];
  /** @type {ReturnType<typeof setTimeout>[]} */
  #timers = [];
  #lastEmit = 0;
  /** @type {ReturnType<typeof setTimeout> | null} */
  #emitTimer = null;
  #pauseEpoch = 0;
  #refreshing = false;

  /**
   * @param {PageConfig} config
   * @param {NodeOptions} options
   */
  constructor(config, options) {
    checkConfig(config);
    this.config = config;
    /** The ICE settings of every link, from the page configuration's `ice`. */
    this.transportConfig = transportConfigFor(config);
    const {
      db,
      memoryBudgetMb = 512,
      kvBudgetMb = null,
      span = null,
      model = null,
      runtime = { allowWebGPU: true, threads: 1 },
      createTransport,
      onEvent = () => {},
      log = console,
      gossipIntervalMs = 10_000,
      gossipFanout = 3,
      housekeepingMs = 5_000,
      pauseGraceMs = 30_000,
    } = options;
    if (!db) throw new NodeError('give the IndexedDB database (openDatabase) as options.db');
    if (!(typeof memoryBudgetMb === 'number' && memoryBudgetMb > 0 && Number.isFinite(memoryBudgetMb))) {
      throw new NodeError(`memory budget ${memoryBudgetMb} MiB must be a positive number`);
    }
    if (kvBudgetMb !== null && !(typeof kvBudgetMb === 'number' && kvBudgetMb > 0 && Number.isFinite(kvBudgetMb))) {
      throw new NodeError(`KV budget ${kvBudgetMb} MiB must be a positive number`);
    }
    const entry = model === null ? config.models[0] : config.models.find((m) => m.name === model);
    if (entry === undefined) throw new NodeError(`this network serves no model called ${JSON.stringify(model)}`);
    this.db = db;
    this.modelEntry = entry;
    this.budgetBytes = Math.floor(memoryBudgetMb * MIB);
    this.kvCapBytes = kvBudgetMb === null ? Infinity : Math.floor(kvBudgetMb * MIB);
    this.requestedSpan = span;
    this.runtimeOptions = runtime;
    this.createTransport = createTransport;
    this.onEvent = onEvent;
    this.log = log;
    this.gossipIntervalMs = gossipIntervalMs;
    this.gossipFanout = gossipFanout;
    this.housekeepingMs = housekeepingMs;
    this.pauseGraceMs = pauseGraceMs;
    /** @type {import('../identity/identity.js').Identity | null} */
    this.identity = null;
    /** @type {BrowserLedger | null} */
    this.ledger = null;
    /** @type {BrowserNodeCore | null} identity, lock, signal client, transport, signaling gossip */
    this.core = null;
    /** @type {SpanServer | null} */
    this.server = null;
    /** @type {any} */
    this.manifest = null;
    /** @type {SpanChoice | null} */
    this.span = null;
    /** @type {string | null} what the span needs against the budget, and why the budget is what it is */
    this.choice = null;
    this.throughput = 0;
    /** @type {BlocksRunner[]} */
    this.runners = [];
    /** @type {ModelFiles | null} where the model's files come from (peers, else HTTP) */
    this.files = null;
    /** @type {import('./seeder.js').BrowserSeeder | null} answers CHUNK requests for the files held */
    this.seeder = null;
  }

  /**
   * Start a node and return it once it serves; on failure everything is released, the status says
   * why (`state: 'error'`) and the error is thrown.
   * @param {PageConfig} config
   * @param {NodeOptions} options
   */
  static async start(config, options) {
    const node = new BrowserNode(config, options);
    try {
      await node.#boot();
    } catch (err) {
      node.#error = message(err);
      await node.#release();
      node.#setState('error');
      throw err;
    }
    return node;
  }

  get peerId() {
    return this.identity?.peerId ?? null;
  }

  /** The signal client (null before start). */
  get signal() {
    return this.core?.signal ?? null;
  }

  /** The transport (null until the span is loaded). */
  get transport() {
    return this.core?.transport ?? null;
  }

  /** @returns {NodeStatus} */
  status() {
    const server = this.server;
    return {
      state: this.#state,
      error: this.#error,
      peerId: this.peerId,
      model: this.modelEntry.name,
      span: this.span === null ? null : { ...this.span },
      download: { ...this.#download },
      sessions: server?.sessions.size ?? 0,
      tokensServed: server?.tokensServed ?? 0,
      tokensPerSecond: this.#rate(),
      peers: (this.transport?.links ?? []).map((l) => ({ peerId: l.remoteId, state: l.state })),
      balance: this.#account.balance,
      earned: this.#account.earned,
      signaling: this.signal?.url ? [this.signal.url] : [],
      choice: this.choice,
    };
  }

  // --- start ----------------------------------------------------------------------------------------

  async #boot() {
    this.#setState('starting');
    // One node per identity: two tabs of one browser share the IndexedDB key and ledger, and two
    // writers of one log would fork it (and the author would be excluded by every peer).
    const lock = await acquireNodeLock(`ai4all-node/${this.db.name}`);
    try {
      this.identity = await loadOrCreateIdentity(this.db);
    } catch (err) {
      lock();
      throw err;
    }
    const core = new BrowserNodeCore({
      identity: this.identity,
      transportConfig: this.transportConfig,
      createTransport: this.createTransport,
      log: this.log,
    });
    core.unlock = lock;
    this.core = core;
    this.#emit();
    this.log.info(`browser node ${this.identity.peerId.slice(0, 16)} starting`);
    this.ledger = await BrowserLedger.open({
      db: this.db,
      identity: this.identity,
      powBits: this.config.ledger.pow_bits,
      coreUrl: this.config.python_core,
      log: this.log,
    });
    core.useLedger(this.ledger);
    await this.#refreshAccount();
    const signal = await core.connect(this.config.signal, { serves: [] });
    // the signed manifest from the peers seeding the model (else over HTTP), then its files likewise
    this.files = await ModelFiles.open({ db: this.db, core, modelEntry: this.modelEntry, policy: trustPolicy(this.config), log: this.log });
    this.manifest = this.files.manifest;
    const manifest = this.manifest;
    // The backend bounds the budget (a WASM instance holds at most 4 GiB), so it is known before the span.
    const backend = await chooseBackend(this.runtimeOptions.allowWebGPU ?? true);
    const nav = /** @type {{deviceMemory?: number} | undefined} */ (globalThis.navigator);
    const budget = backendBudget(this.budgetBytes, backend, { deviceMemoryGb: nav?.deviceMemory });
    let span = this.requestedSpan;
    let need;
    if (span === null) {
      const announcements = await signal.lookup(manifest.model.name, 0, numLayers(manifest), { limit: 64 });
      need = leastServedChoice(manifest, announcements, budget.bytes);
      span = need.span;
      this.log.info(`serving the least-served span that fits: ${describeNeed(need)}`);
    } else {
      spanShards(manifest, span); // a span that is no run of shards is refused before its size
      need = checkSpanFits(manifest, span, budget.bytes);
    }
    const shards = spanShards(manifest, span);
    this.choice =
      `${this.requestedSpan === null ? 'the least-served blocks that fit' : 'the blocks you chose'}: ` +
      `${describeNeed(need)}; budget ${gib(budget.bytes)} on ${backend === 'webgpu' ? 'WebGPU' : 'WASM'}, ${budget.reason}`;
    this.span = { start: span.start, end: span.end };
    await this.#loadShards(shards);
    this.files.close();
    this.seeder = this.files.seed();
    this.server = new SpanServer(manifest, this.span, this.runners, {
      memoryBudgetBytes: Math.min(this.kvCapBytes, budget.bytes - need.weights),
      ledger: this.ledger,
      identity: this.identity,
      onChange: (event) => {
        if (event.type === 'receipt') this.#refreshAccount().catch(() => {});
        this.#changed();
      },
    });
    this.throughput = await this.server.measureThroughput();
    const server = this.server;
    core.plug({
      serves: true,
      claims: () => true,
      onFrame: (link, frame) => this.#onFrame(link, frame),
      onLinkClosed: (link) => {
        const links = this.transport?.links ?? [];
        if (!links.some((l) => l.remoteId === link.remoteId)) server.closeClient(link.remoteId);
        this.#changed();
      },
      onLinkOpen: () => this.#changed(),
    });
    core.openTransport();
    await this.#announce();
    this.#setState('serving');
    this.log.info(
      `browser node ${this.identity.peerId.slice(0, 16)} serves ${manifest.model.name} blocks ` +
        `${span.start}-${span.end} at ${this.throughput.toFixed(0)} block-tokens/s`,
    );
    this.#sample(); // the rate counts from here
    this.#every(this.housekeepingMs, () => this.#housekeeping());
    this.#every(1_000, () => this.#sample());
    core.gossipRounds({
      model: manifest.model.name,
      numLayers: numLayers(manifest),
      intervalMs: this.gossipIntervalMs,
      fanout: this.gossipFanout,
    });
  }

  /**
   * Fetch (or read from the IndexedDB cache) and load the shards; `download.cached` says whether
   * every byte came from the cache (a corrupt cached copy is fetched again: ./model_files.js).
   * @param {import('../runtime/shard.js').ShardEntry[]} shards
   */
  async #loadShards(shards) {
    this.#download = { loaded: 0, total: shards.reduce((sum, s) => sum + shardTotalBytes(s), 0), cached: false };
    this.#setState('downloading');
    const files = /** @type {ModelFiles} */ (this.files);
    let done = 0;
    let allCached = true;
    for (const entry of shards) {
      // every file of the shard (its .onnx, then its .onnx.data if any), each verified and cached:
      // from the cache, else from the peers seeding it in verified chunks, else over HTTP (model_files.js)
      const meta = { model: this.modelEntry.name, shard: entry.file, start: entry.start, end: entry.end };
      /** @type {import('../runtime/shard.js').FetchFile} */
      const fetchFile = (url, listed, onProgress) =>
        files.fetchFile({ ...meta, file: listed.file }, () => {
          allCached = false;
        })(url, listed, onProgress);
      const onProgress = (/** @type {number} */ loaded) => {
        this.#download = { ...this.#download, loaded: done + loaded };
        this.#changed();
      };
      const runner = await ShardRunner.load(folder(this.modelEntry.base), entry, { onProgress, fetchFile, runtime: this.runtimeOptions });
      done += shardTotalBytes(entry);
      this.#download = { loaded: done, total: this.#download.total, cached: allCached };
      this.#changed();
      this.runners.push(new BlocksRunner(runner, this.manifest));
    }
  }

  async #announce() {
    const server = /** @type {SpanServer} */ (this.server);
    const span = /** @type {SpanChoice} */ (this.span);
    await this.signal?.update({
      serves: [{ model: this.modelEntry.name, start: span.start, end: span.end }],
      throughputMilli: Math.max(1, Math.round(this.throughput * 1000)),
      kvFreeTokens: server.kvFreeTokens,
    });
    this.announcedKv = server.kvFreeTokens;
  }

  // --- frames and gossip ----------------------------------------------------------------------------

  /**
   * Open a ledger gossip round through signaling with up to `fanout` random peers of the model
   * (`BrowserNodeCore.gossipNow`); resolve to how many.
   */
  async gossipNow(fanout = this.gossipFanout) {
    if (this.core === null || this.manifest === null) return 0;
    return this.core.gossipNow(this.modelEntry.name, numLayers(this.manifest), fanout);
  }

  /**
   * @param {{remoteId: string, send(frame: import('../protocol/wire.js').Frame): Promise<void>}} link
   * @param {import('../protocol/wire.js').Frame} frame
   */
  #onFrame(link, frame) {
    const server = this.server;
    if (server === null) return;
    // CHUNK frames (docs/chunks.md) to the seeder; a node seeding nothing refuses them as the seeder would
    const answering = frame.type === FrameType.CHUNK ? this.#seed(link.remoteId, frame) : server.handle(link.remoteId, frame);
    answering
      .then((answer) => link.send(answer))
      .catch((err) => this.log.warn(`answer to ${link.remoteId.slice(0, 8)} not sent: ${message(err)}`));
  }

  /**
   * @param {string} client
   * @param {import('../protocol/wire.js').Frame} frame
   */
  async #seed(client, frame) {
    if (this.seeder !== null) return this.seeder.handle(client, frame);
    return errorFrame(frame.session, frame.step, ChunkErrorCode.NOT_SEEDED, 'this browser node seeds no signed model');
  }

  // --- housekeeping and status -----------------------------------------------------------------------

  async #housekeeping() {
    const server = this.server;
    if (server === null) return;
    server.evictIdle();
    const free = server.kvFreeTokens;
    if (this.#state === 'serving' && free !== this.announcedKv) {
      await this.signal?.update({ kvFreeTokens: free });
      this.announcedKv = free;
    }
    await this.#refreshAccount();
  }

  async #refreshAccount() {
    if (this.ledger === null || this.#refreshing) return;
    this.#refreshing = true;
    try {
      const account = await this.ledger.account();
      if (account.balance !== this.#account.balance || account.earned !== this.#account.earned) {
        this.#account = { balance: account.balance, earned: account.earned };
        this.#changed();
      }
    } catch (err) {
      this.log.warn(`reading the balance failed: ${message(err)}`);
    } finally {
      this.#refreshing = false;
    }
  }

  #sample() {
    const now = Date.now();
    this.#samples.push([now, this.server?.tokensServed ?? 0]);
    while (this.#samples.length > 2 && now - this.#samples[0][0] > RATE_WINDOW_MS) this.#samples.shift();
    this.#changed();
  }

  /** Token positions served per second since the oldest sample of the window (at least 1 s back). */
  #rate() {
    const first = this.#samples[0];
    if (first === undefined) return 0;
    const served = (this.server?.tokensServed ?? 0) - first[1];
    return (served * 1000) / Math.max(Date.now() - first[0], 1000);
  }

  /**
   * @param {number} ms
   * @param {() => Promise<void> | void} task
   */
  #every(ms, task) {
    let running = false;
    const timer = setInterval(async () => {
      if (running) return;
      running = true;
      try {
        await task();
      } catch (err) {
        this.log.warn(`housekeeping failed: ${message(err)}`);
      } finally {
        running = false;
      }
    }, ms);
    this.#timers.push(timer);
  }

  /** @param {NodeStatus['state']} state */
  #setState(state) {
    this.#state = state;
    this.#emit();
  }

  /** Emit the status now, or within STATUS_THROTTLE_MS when one was just emitted. */
  #changed() {
    if (this.#emitTimer !== null) return;
    const wait = this.#lastEmit + STATUS_THROTTLE_MS - Date.now();
    if (wait <= 0) {
      this.#emit();
      return;
    }
    this.#emitTimer = setTimeout(() => {
      this.#emitTimer = null;
      this.#emit();
    }, wait);
  }

  #emit() {
    this.#lastEmit = Date.now();
    try {
      this.onEvent({ type: 'status', status: this.status() });
    } catch (err) {
      this.log.warn(`status listener failed: ${message(err)}`);
    }
  }

  // --- pause, resume, stop ---------------------------------------------------------------------------

  /**
   * Stop serving cleanly: refuse new sessions and stop announcing the span now; let open sessions run
   * to their end for up to `graceMs`, then close the rest (their clients fail over). The ledger stays
   * and keeps gossiping. Resolves once no session is open.
   * @param {{graceMs?: number}} [options]
   */
  async pause({ graceMs = this.pauseGraceMs } = {}) {
    if (this.#state !== 'serving' || this.server === null) return;
    const server = this.server;
    const epoch = ++this.#pauseEpoch;
    server.paused = true;
    this.#setState('paused');
    try {
      await this.signal?.update({ serves: [], kvFreeTokens: 0 });
    } catch (err) {
      this.log.warn(`withdrawing the announcement failed: ${message(err)}`);
    }
    const deadline = Date.now() + graceMs;
    const paused = () => this.#pauseEpoch === epoch && this.status().state === 'paused';
    while (server.sessions.size > 0 && Date.now() < deadline && paused()) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (paused() && server.sessions.size > 0) {
      this.log.info(`closing ${server.sessions.size} sessions still open after ${graceMs} ms of pause`);
      server.closeAll();
    }
    this.#changed();
  }

  /** Announce the span again and take new sessions. */
  async resume() {
    if (this.#state !== 'paused' || this.server === null) return;
    this.#pauseEpoch++;
    this.server.paused = false;
    this.#setState('serving');
    await this.#announce();
  }

  /** Release everything: links, sessions and runtime sessions, the signal client (with a bye), the ledger. */
  async stop() {
    if (this.#state === 'stopped') return;
    this.#pauseEpoch++;
    if (this.server !== null) this.server.paused = true;
    await this.#release();
    this.#setState('stopped');
  }

  async #release() {
    for (const timer of this.#timers.splice(0)) {
      clearTimeout(timer);
      clearInterval(timer);
    }
    if (this.#emitTimer !== null) clearTimeout(this.#emitTimer);
    this.#emitTimer = null;
    this.files?.close();
    await this.core?.close();
    if (this.server !== null) await this.server.release();
    else for (const runner of this.runners) await runner.release();
    if (this.ledger !== null) {
      try {
        await this.ledger.close();
      } catch (err) {
        this.log.warn(`closing the ledger: ${message(err)}`);
      }
    }
    await this.core?.release();
  }
}

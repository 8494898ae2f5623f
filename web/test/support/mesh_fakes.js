// @ts-check
/**
 * In-memory fakes for the browser node's fast tier (`node --test web/test/`): a mesh of `SpanServer`s
 * over fake links (frames really encoded and decoded by web/src/protocol/wire.js), fake block runners
 * whose output depends on how many tokens their session has seen (so a missing replay shows), fake
 * embed and head runners, a fake signal client, and the ledger exchange's codec run by the real
 * `python_peer/core/ledger_exchange.py` in a Python subprocess.
 */

import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { MeshClient } from '../../src/client/mesh_client.js';
import { decodeFrame, encodeFrame } from '../../src/protocol/wire.js';
import { LinkClosedError } from '../../src/transport/peer.js';
import { SpanServer } from '../../src/node/span_server.js';
import { ExchangeCodec } from '../../src/ledger/exchange_codec.js';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const HIDDEN = 8;
export const LAYERS = 4;
export const MODEL = 'fake-model';
export const CLIENT_ID = 'c'.repeat(64);

/** A logger that says nothing. */
export const quiet = { info: () => {}, warn: () => {} };

/** The mesh client settings of these tests: bounded waits, a few failovers, answers checked. */
export const CLIENT_CONFIG = { requestTimeoutMs: 5_000, connectTimeoutMs: 5_000, closeTimeoutMs: 5_000, banSeconds: 60, maxFailovers: 4 };

/** Token ids as a step's input. @param {number[]} ids */
export const tokens = (ids) => BigInt64Array.from(ids.map(BigInt));

/** An attention mask of `n` ones. @param {number} n */
export const ones = (n) => new BigInt64Array(n).fill(1n);

/**
 * A `MeshClient` on `mesh` with the fake embed and head; `options` replace its settings, signal
 * client, transport (built from the client itself, for the links' replies) or manifest.
 * @param {FakeMesh} mesh
 * @param {{config?: object, clientId?: string, manifest?: object, signal?: object, ledger?: object,
 *   transport?: (self: () => any) => object}} [options]
 */
export function fakeClient(mesh, options = {}) {
  const clientId = options.clientId ?? CLIENT_ID;
  /** @type {MeshClient | null} */
  let client = null;
  const self = () => /** @type {any} */ (client);
  client = new MeshClient({
    manifest: /** @type {any} */ (options.manifest ?? fakeManifest()),
    signal: /** @type {any} */ (options.signal ?? mesh.signal(clientId)),
    transport: /** @type {any} */ (options.transport ? options.transport(self) : mesh.transport(self, clientId)),
    embed: /** @type {any} */ (fakeEmbed),
    head: /** @type {any} */ (fakeHead),
    ledger: /** @type {any} */ (options.ledger ?? null),
    config: /** @type {any} */ (options.config ?? CLIENT_CONFIG),
    log: quiet,
  });
  return client;
}

/** A manifest of `LAYERS` blocks of width `HIDDEN` (what `SpanServer` and `MeshClient` read of it). */
export function fakeManifest() {
  return {
    model: { name: MODEL, config: { num_layers: LAYERS, hidden_size: HIDDEN, num_key_value_heads: 1, head_dim: HIDDEN } },
    shards: [],
  };
}

/**
 * The block shard `[start, end)`: out = 0.5 * hidden + (start + 1) + 0.01 * (tokens seen before in
 * this session), so a replacement that missed the replay answers differently.
 */
export class FakeBlocks {
  /** @param {number} start @param {number} end */
  constructor(start, end) {
    this.start = start;
    this.end = end;
    /** @type {Map<string, {batch: number, seen: number}>} */
    this.sessions = new Map();
  }

  /** @param {string} key @param {number} batch */
  open(key, batch) {
    this.sessions.set(key, { batch, seen: 0 });
  }

  /** @param {string} key */
  close(key) {
    this.sessions.delete(key);
  }

  /**
   * @param {string} key
   * @param {{data: Float32Array, dims: number[]}} hidden
   * @returns {Promise<{data: Float32Array, dims: number[]}>}
   */
  async forward(key, hidden) {
    const state = this.sessions.get(key);
    if (state === undefined) throw new Error(`no session ${key}`);
    const [batch, seq, width] = hidden.dims;
    const out = new Float32Array(hidden.data.length);
    for (let b = 0; b < batch; b++) {
      for (let t = 0; t < seq; t++) {
        for (let w = 0; w < width; w++) {
          const i = (b * seq + t) * width + w;
          out[i] = 0.5 * hidden.data[i] + (this.start + 1) + 0.01 * (state.seen + t);
        }
      }
    }
    state.seen += seq;
    return { data: out, dims: [...hidden.dims] };
  }

  async release() {}
}

/** Embedding on "this machine": token id t -> [t, t, ...] / 100. */
export const fakeEmbed = {
  /** @param {BigInt64Array} ids @param {number[]} dims */
  async run(ids, dims) {
    const data = new Float32Array(ids.length * HIDDEN);
    ids.forEach((id, i) => data.fill(Number(id) / 100, i * HIDDEN, (i + 1) * HIDDEN));
    return { data, dims: [dims[0], dims[1], HIDDEN] };
  },
  async release() {},
};

/** The head: the logits are the hidden states. */
export const fakeHead = {
  /** @param {{data: Float32Array, dims: number[]}} hidden */
  async run(hidden) {
    return { data: hidden.data.slice(), dims: [...hidden.dims] };
  },
  async release() {},
};

/**
 * The logits the mesh must give for steps of single-row token ids through a route of `spans`, computed
 * with no network: each span's blocks in order, one session throughout.
 * @param {BigInt64Array[]} steps
 * @param {[number, number][]} spans
 */
export async function referenceLogits(steps, spans) {
  const blocks = spans.map(([start, end]) => new FakeBlocks(start, end));
  for (const b of blocks) b.open('ref', 1);
  const out = [];
  for (const ids of steps) {
    /** @type {{data: Float32Array, dims: number[]}} */
    let hidden = await fakeEmbed.run(ids, [1, ids.length]);
    for (const b of blocks) hidden = await b.forward('ref', hidden);
    const seq = ids.length;
    out.push(Array.from(hidden.data.subarray((seq - 1) * HIDDEN, seq * HIDDEN)));
  }
  return out;
}

/**
 * Peers serving spans, reached over fake links. A killed peer's links close and new connections fail.
 */
export class FakeMesh {
  constructor() {
    /** @type {Map<string, {server: SpanServer, alive: boolean, seen: import('../../src/protocol/wire.js').Frame[], links: Set<FakeLink>}>} */
    this.peers = new Map();
  }

  /**
   * @param {string} peerId  64 hex digits
   * @param {number} start
   * @param {number} end
   * @param {import('../../src/node/span_server.js').ServerConfig} [config]
   */
  add(peerId, start, end, config = {}) {
    const server = new SpanServer(/** @type {any} */ (fakeManifest()), { start, end }, /** @type {any} */ ([new FakeBlocks(start, end)]), config);
    this.peers.set(peerId, { server, alive: true, seen: [], links: new Set() });
    return server;
  }

  /** The peer dies: its links close (the client hears of it as from a transport). @param {string} peerId */
  kill(peerId) {
    const peer = /** @type {NonNullable<ReturnType<FakeMesh['peers']['get']>>} */ (this.peers.get(peerId));
    peer.alive = false;
    for (const link of peer.links) link.close('the peer died');
  }

  /** A signal client that knows every peer ever added (a dead one stays announced until it expires). */
  signal(clientId = CLIENT_ID) {
    return {
      peerId: clientId,
      lookup: async () =>
        [...this.peers.entries()].map(([peerId, p]) => ({
          peer_id: peerId,
          serves: [{ model: MODEL, start: p.server.start, end: p.server.end }],
          throughput_milli: 1000_000,
          kv_free_tokens: 1 << 20,
        })),
    };
  }

  /**
   * A transport offering fake links from `clientId`; frames come back through `deliver(link, frame)`.
   * @param {() => {deliver: Function, linkClosed: Function}} client
   * @param {string} [clientId]
   */
  transport(client, clientId = CLIENT_ID) {
    return {
      /** @param {string} peerId */
      connect: async (peerId) => {
        const peer = this.peers.get(peerId);
        if (peer === undefined || !peer.alive) throw new LinkClosedError(`no answer from ${peerId.slice(0, 8)}`);
        const link = new FakeLink(peerId, clientId, peer, client);
        peer.links.add(link);
        return link;
      },
    };
  }
}

/** A link to one fake peer: each frame is encoded, decoded, answered by the peer's SpanServer. */
export class FakeLink {
  /**
   * @param {string} remoteId
   * @param {string} clientId
   * @param {{server: SpanServer, alive: boolean, seen: import('../../src/protocol/wire.js').Frame[]}} peer
   * @param {() => {deliver: Function, linkClosed: Function}} client
   */
  constructor(remoteId, clientId, peer, client) {
    this.remoteId = remoteId;
    this.clientId = clientId;
    this.peer = peer;
    this.client = client;
    this.state = 'open';
    this.closeReason = '';
    this.rttMs = 1;
  }

  async ping() {
    if (this.state === 'closed') throw new LinkClosedError('closed');
  }

  /** @param {string} reason */
  close(reason) {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.closeReason = reason;
    this.client().linkClosed(this);
  }

  /** @param {import('../../src/protocol/wire.js').FrameInit} init */
  async send(init) {
    if (this.state === 'closed') throw new LinkClosedError(`link closed: ${this.closeReason}`);
    const bytes = encodeFrame(/** @type {any} */ (init));
    const frame = decodeFrame(bytes);
    this.peer.seen.push(frame);
    this.peer.server.handle(this.clientId, frame).then((answer) => {
      if (this.state === 'closed' || !this.peer.alive) return;
      this.client().deliver(this, decodeFrame(encodeFrame(answer)));
    });
    return bytes.length;
  }
}

/**
 * The real `python_peer/core/ledger_exchange.py`, one Python subprocess per call (`PYTHON`, default
 * `python3`): what the browser runs under Pyodide.
 */
export function pythonCodec() {
  const script =
    'import sys\nsys.path.insert(0, ".")\nfrom python_peer.core.ledger_exchange import call_json\n' +
    'sys.stdout.write(call_json(sys.argv[1], sys.stdin.read()))';
  return new ExchangeCodec((name, args) =>
    execFileSync(process.env.PYTHON ?? 'python3', ['-c', script, name], { input: args, cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }).toString(),
  );
}

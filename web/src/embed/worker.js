// @ts-check
/**
 * The embedded node's Web Worker (docs/browser.md, "embed.js"): the whole `BrowserNode` (identity,
 * ledger under Pyodide, signal client, onnxruntime-web, IndexedDB cache) runs here, off the host page's
 * main thread; its WebRTC links live on the page (`RelayHost` of ./relay.js), since workers have no
 * `RTCPeerConnection`.
 *
 * `embed.js` starts this module from a `blob:` module worker (a script of another origin cannot be a
 * Worker URL), so `import.meta.url` is the node's own URL and every path below resolves on the node.
 * The worker belongs to the host page's origin: its IndexedDB (identity, ledger, cached shards) is that
 * site's, and nothing is stored anywhere else. As every tab of the site shares that identity, one node
 * runs per site at a time (a Web Lock, `NODE_LOCK`); another tab's consent fails with a clear message.
 *
 * Messages from the page: `{t: 'start', memoryBudgetMb, signal, relay}` (relay: a MessagePort, the other
 * end held by the page's RelayHost; signal: a ws(s) URL replacing the configuration's list, or null),
 * `{t: 'stop'}`. To the page: `{t: 'ready'}` once loaded, `{t: 'status', status}` (BrowserNode's
 * status, throttled by the node), `{t: 'failed', message}` when the node cannot start or run, and
 * `{t: 'stopped'}` once `stop` released everything (the signal client said bye, the links closed), or
 * at once when the node was still starting (it announces nothing before it serves).
 *
 * The configuration's ICE settings (`ice`: STUN/TURN servers, loopback confinement) reach the page's
 * RelayHost, which makes the real RTCPeerConnections, in the relay's `hello`: the BrowserNode gives
 * them to its RelayTransport (`transportConfigFor`), and the page checks them again.
 */

import { BrowserNode } from '../node/node.js';
import { openDatabase } from '../storage/db.js';
import { RelayTransport } from './relay.js';

/** The bounds embed.js checks `data-max-memory-mb` against; checked again here. */
export const MIN_MEMORY_MB = 128;
export const MAX_MEMORY_MB = 4096;
export const DB_NAME = 'ai4all';
/** The node's root, where `/v1/config` is: this file is `<root>/web/src/embed/worker.js`. */
export const NODE_ROOT = new URL('../../../', import.meta.url);
export const CONFIG_URL = new URL('v1/config', NODE_ROOT);
const MAX_CONFIG_BYTES = 64 * 1024;
/** One node per site: tabs of one site share the IndexedDB identity, and one identity is one peer. */
export const NODE_LOCK = 'ai4all-embedded-node';
const LOCK_WAIT_MS = 3_000;

const scope = /** @type {any} */ (globalThis);

/** @type {BrowserNode | null} */
let node = null;
/** @type {'idle' | 'starting' | 'running' | 'stopping' | 'stopped'} */
let phase = 'idle';
/** @type {MessagePort | null} */
let relayPort = null;

/** @param {{[key: string]: unknown, t: string}} message */
function post(message) {
  scope.postMessage(message);
}

/** @param {unknown} err */
const describe = (err) => (err instanceof Error ? err.message || err.name : String(err));

/**
 * @param {unknown} value
 * @returns {value is {[key: string]: unknown}}
 */
function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * A memory budget as embed.js gives it: a whole number of MiB in [MIN_MEMORY_MB, MAX_MEMORY_MB].
 * @param {unknown} value
 */
export function checkMemoryBudget(value) {
  if (!Number.isInteger(value) || /** @type {number} */ (value) < MIN_MEMORY_MB || /** @type {number} */ (value) > MAX_MEMORY_MB) {
    throw new RangeError(`memory budget ${String(value).slice(0, 40)} MB must be a whole number from ${MIN_MEMORY_MB} to ${MAX_MEMORY_MB}`);
  }
  return /** @type {number} */ (value);
}

/**
 * A signaling URL override: null, or a ws:/wss: URL without credentials or fragment.
 * @param {unknown} value
 */
export function checkSignalUrl(value) {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string' || value.length > 2048) throw new TypeError('the signaling URL must be a string of at most 2048 characters');
  let url;
  try {
    url = new URL(value);
  } catch {
    throw new TypeError(`signaling URL ${JSON.stringify(value.slice(0, 80))} is not a URL`);
  }
  if ((url.protocol !== 'ws:' && url.protocol !== 'wss:') || url.username || url.password || url.hash) {
    throw new TypeError(`signaling URL ${JSON.stringify(value.slice(0, 80))} must be ws:// or wss://, without credentials or #fragment`);
  }
  return url.href;
}

/**
 * The page configuration of this node (`/v1/config`), its URLs made absolute against the node (a
 * worker's own URL is a blob:), the signaling list replaced by `signal` when given.
 * @param {string | null} signal
 */
export async function loadConfig(signal) {
  let response;
  try {
    response = await fetch(CONFIG_URL, { cache: 'no-store', credentials: 'omit' });
  } catch (err) {
    throw new Error(`cannot reach the node's configuration at ${CONFIG_URL.href}: ${describe(err)}`);
  }
  if (!response.ok) throw new Error(`the node's configuration at ${CONFIG_URL.href} answered HTTP ${response.status}`);
  const text = await response.text();
  if (text.length > MAX_CONFIG_BYTES) throw new Error(`the node's configuration is over ${MAX_CONFIG_BYTES} bytes`);
  let config;
  try {
    config = JSON.parse(text);
  } catch (err) {
    throw new Error(`the node's configuration at ${CONFIG_URL.href} is not JSON: ${describe(err)}`);
  }
  if (!isPlainObject(config)) throw new Error(`the node's configuration at ${CONFIG_URL.href} is not a JSON object`);
  const absolute = (/** @type {unknown} */ url) => (typeof url === 'string' ? new URL(url, NODE_ROOT).href : url);
  const models = Array.isArray(config.models)
    ? config.models.map((m) => (isPlainObject(m) ? { ...m, base: absolute(m.base) } : m))
    : config.models;
  return {
    ...config,
    signal: signal === null ? config.signal : [signal],
    models,
    python_core: absolute(config.python_core),
  };
}

/**
 * Hold the site's node lock (Web Locks, shared by this site's tabs and workers) until the returned
 * function is called or this worker ends; waits up to LOCK_WAIT_MS for a stopping node to let go.
 * @returns {Promise<() => void>}
 */
export function acquireNodeLock() {
  const locks = scope.navigator?.locks;
  if (!locks) return Promise.resolve(() => {}); // no Web Locks here: nothing to coordinate with
  return new Promise((resolve, reject) => {
    locks
      .request(NODE_LOCK, { signal: AbortSignal.timeout(LOCK_WAIT_MS) }, () => new Promise((release) => resolve(() => release(undefined))))
      .catch((/** @type {unknown} */ err) => {
        const timedOut = err instanceof DOMException && (err.name === 'TimeoutError' || err.name === 'AbortError');
        reject(timedOut ? new Error('AI4All already runs in another tab or window of this site: stop it there first') : err);
      });
  });
}

/** @type {(() => void) | null} */
let releaseLock = null;

/** @param {{[key: string]: unknown}} message */
async function start(message) {
  phase = 'starting';
  const memoryBudgetMb = checkMemoryBudget(message.memoryBudgetMb);
  const signal = checkSignalUrl(message.signal);
  if (!(message.relay instanceof MessagePort)) throw new TypeError('start needs the relay MessagePort');
  relayPort = message.relay;
  releaseLock = await acquireNodeLock();
  const config = await loadConfig(signal);
  const db = await openDatabase(DB_NAME);
  const port = relayPort;
  const started = await BrowserNode.start(/** @type {any} */ (config), {
    db,
    memoryBudgetMb,
    runtime: { allowWebGPU: Boolean(scope.navigator?.gpu), threads: 1 },
    createTransport: (hooks) => new RelayTransport(port, /** @type {any} */ (hooks)),
    onEvent: (event) => {
      if (event.type === 'status') post({ t: 'status', status: event.status });
    },
  });
  if (/** @type {string} */ (phase) === 'stopping') {
    // Stop came while starting (a BrowserNode cannot be stopped half-way) and the page has not ended
    // this worker yet: stop the node now that it exists.
    await started.stop();
    phase = 'stopped';
    releaseLock?.();
    return;
  }
  node = started;
  phase = 'running';
  post({ t: 'status', status: started.status() });
}

async function stop() {
  phase = 'stopping';
  try {
    if (node !== null) await node.stop();
  } finally {
    node = null;
    relayPort?.close();
    relayPort = null;
    releaseLock?.();
    releaseLock = null;
    phase = 'stopped';
    post({ t: 'stopped' });
  }
}

scope.addEventListener('message', (/** @type {MessageEvent} */ event) => {
  const message = event.data;
  if (!isPlainObject(message) || typeof message.t !== 'string') {
    console.warn('embed worker: dropped a malformed message from the page');
    return;
  }
  if (message.t === 'start') {
    if (phase !== 'idle') {
      console.warn(`embed worker: dropped a second start (the node is ${phase})`);
      return;
    }
    start(message).catch((err) => {
      const wasStopping = /** @type {string} */ (phase) === 'stopping';
      node = null;
      phase = 'stopped';
      releaseLock?.();
      releaseLock = null;
      if (!wasStopping) {
        console.error('embed worker: the node did not start', err);
        post({ t: 'failed', message: describe(err) });
      }
    });
  } else if (message.t === 'stop') {
    if (phase === 'running') {
      stop().catch((err) => post({ t: 'failed', message: `stopping failed: ${describe(err)}` }));
    } else if (phase !== 'stopping') {
      // Nothing is announced before the node serves, and a BrowserNode cannot be stopped half-way:
      // the page may end this worker now (if it does not, start() stops the node once it is up).
      phase = phase === 'starting' ? 'stopping' : 'stopped';
      post({ t: 'stopped' });
    }
  } else {
    console.warn(`embed worker: dropped a message of unknown type ${JSON.stringify(message.t.slice(0, 40))}`);
  }
});

scope.addEventListener('unhandledrejection', (/** @type {PromiseRejectionEvent} */ event) => {
  console.error('embed worker: unhandled rejection', event.reason);
});

post({ t: 'ready' });

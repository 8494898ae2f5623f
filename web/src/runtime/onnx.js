// @ts-check
/**
 * The one module that touches onnxruntime-web: loading it, picking a backend, creating sessions,
 * making tensors and running. Everything else in `web/src/runtime/` goes through these functions,
 * the way transformers.js keeps onnxruntime behind a single backend file.
 *
 * onnxruntime-web is served from the node's own origin (`web/node_modules/onnxruntime-web/dist/`),
 * never from a CDN, with its `.wasm` files loaded from the same folder through `env.wasm.wasmPaths`.
 * The ESM build follows the backend (`ORT_MODULE_FILES`): `ort.wasm.min.mjs` for WASM, and for WebGPU
 * `ort.webgpu.min.mjs`, the native WebGPU execution provider. Not `ort.min.mjs`/`ort.all.min.mjs`: their
 * JSEP WebGPU provider (1.30) returns wrong rotary embeddings for our shards (a broadcast `Mul` of the
 * positions reads another buffer; errors of ~0.3 on the hidden states), where the native one agrees
 * with CPU onnxruntime within ~3e-4. It is imported lazily, on the first `initRuntime()`, so a page that
 * refuses a shard (bad sha256) never loads onnxruntime at all.
 *
 * Backend: WebGPU when the caller allows it and `navigator.gpu.requestAdapter()` gives an adapter, WASM
 * otherwise. Threads: 1 unless the page is cross-origin isolated (COOP/COEP; threaded WASM needs
 * SharedArrayBuffer). onnxruntime's environment is global and fixed by the first session, so the first
 * `initRuntime()` decides; later calls get the same runtime.
 *
 * Errors: `ShardError` (a shard that cannot be fetched, verified or loaded), `ShardInputError` (inputs
 * a shard refuses), `SessionError` (an inference session that is not open, or busy); the names and
 * `code`s follow `python_peer/errors.py`. No DOM.
 */

/** The folder of onnxruntime-web's ESM builds and `.wasm` files, next to `web/src/`. */
export const DEFAULT_ORT_DIST_URL = new URL('../../node_modules/onnxruntime-web/dist/', import.meta.url).href;
/** The ESM build of onnxruntime-web for each backend (see the module comment). */
export const ORT_MODULE_FILES = Object.freeze({ wasm: 'ort.wasm.min.mjs', webgpu: 'ort.webgpu.min.mjs' });
/** At most this many WASM threads, even on a big machine: peers share the CPU with the user. */
export const MAX_THREADS = 4;

// --- errors (python_peer/errors.py) ---------------------------------------------------------------------

/** A shard that cannot be fetched, verified or loaded. */
export class ShardError extends Error {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
    /** @type {string} */
    this.code = 'shard';
  }
}

/** Inputs that a shard refuses: wrong names, dtypes, shapes, NaN or Inf. */
export class ShardInputError extends ShardError {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.code = 'bad_shape';
  }
}

/** An inference session that is not open, already open, or busy with another step. */
export class SessionError extends ShardError {
  /**
   * @param {string} message
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.code = 'unknown_session';
  }
}

// --- runtime ------------------------------------------------------------------------------------------

/** @typedef {'webgpu' | 'wasm'} Backend */
/** @typedef {'float32' | 'float16' | 'int64'} DType */

/**
 * A tensor as onnxruntime-web holds it (the subset of `ort.Tensor` this project reads).
 * @typedef {{type: string, dims: readonly number[], data: any, dispose(): void}} OrtTensor
 */

/**
 * @typedef {object} RuntimeOptions
 * @property {boolean} [allowWebGPU] try WebGPU first (default true)
 * @property {number} [threads] WASM threads; default 1, or up to MAX_THREADS when cross-origin isolated
 * @property {string} [distUrl] where onnxruntime-web's dist files are served (default DEFAULT_ORT_DIST_URL)
 */

/**
 * @typedef {object} Runtime
 * @property {any} ort the onnxruntime-web module
 * @property {Backend} backend the execution provider sessions use
 * @property {number} threads WASM threads
 * @property {string} version onnxruntime-web's version
 */

/** @type {Promise<Runtime> | null} */
let runtimePromise = null;

/**
 * The WASM thread count for this page: 1 unless cross-origin isolated.
 * @param {number} [requested]
 * @returns {number}
 */
export function defaultThreads(requested) {
  const isolated = typeof globalThis.crossOriginIsolated === 'boolean' && globalThis.crossOriginIsolated;
  if (!isolated) return 1;
  const cores = (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 1;
  const wanted = requested ?? Math.min(MAX_THREADS, Math.max(1, cores - 1));
  if (!Number.isInteger(wanted) || wanted < 1) throw new RangeError(`threads must be a positive integer, not ${wanted}`);
  return wanted;
}

/**
 * 'webgpu' when allowed and an adapter is available, 'wasm' otherwise.
 * @param {boolean} [allowWebGPU]
 * @returns {Promise<Backend>}
 */
export async function chooseBackend(allowWebGPU = true) {
  if (!allowWebGPU) return 'wasm';
  /** @type {any} */
  const gpu = typeof navigator !== 'undefined' ? /** @type {any} */ (navigator).gpu : undefined;
  if (!gpu) return 'wasm';
  try {
    const adapter = await gpu.requestAdapter();
    return adapter ? 'webgpu' : 'wasm';
  } catch {
    return 'wasm';
  }
}

/**
 * Load and configure onnxruntime-web once per page; later calls return the same runtime (their options
 * are ignored: onnxruntime's environment is fixed by the first session).
 * @param {RuntimeOptions} [options]
 * @returns {Promise<Runtime>}
 */
export function initRuntime(options = {}) {
  if (!runtimePromise) {
    runtimePromise = loadRuntime(options).catch((error) => {
      runtimePromise = null;
      throw error;
    });
  }
  return runtimePromise;
}

/**
 * @param {RuntimeOptions} options
 * @returns {Promise<Runtime>}
 */
async function loadRuntime({ allowWebGPU = true, threads, distUrl = DEFAULT_ORT_DIST_URL }) {
  const base = distUrl.endsWith('/') ? distUrl : `${distUrl}/`;
  const numThreads = defaultThreads(threads);
  const backend = await chooseBackend(allowWebGPU);
  /** @type {any} */
  let ort;
  const moduleUrl = new URL(ORT_MODULE_FILES[backend], base).href;
  try {
    ort = await import(/* webpackIgnore: true */ moduleUrl);
  } catch (error) {
    throw new ShardError(`cannot load onnxruntime-web from ${moduleUrl}: ${messageOf(error)}`, {
      cause: error,
    });
  }
  ort.env.wasm.wasmPaths = base;
  ort.env.wasm.numThreads = numThreads;
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
  return { ort, backend, threads: numThreads, version: String(ort.env.versions?.web ?? '') };
}

/**
 * An onnxruntime inference session over the bytes of a verified shard and of its verified external-data
 * file, if it has one (`externalData`: `{path, data}` with `path` the name the `.onnx` refers to; only
 * these bytes are given to onnxruntime-web, which fetches nothing itself).
 * @param {Runtime} runtime
 * @param {ArrayBuffer | Uint8Array} bytes
 * @param {string} name the shard's file name, for messages
 * @param {{path: string, data: Uint8Array}[]} [externalData]
 * @returns {Promise<any>} an `ort.InferenceSession`
 */
export async function createSession(runtime, bytes, name, externalData = []) {
  const model = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  try {
    return await runtime.ort.InferenceSession.create(model, {
      executionProviders: [runtime.backend],
      graphOptimizationLevel: 'all',
      logSeverityLevel: 3,
      ...(externalData.length > 0 ? { externalData } : {}),
    });
  } catch (error) {
    throw new ShardError(`onnxruntime (${runtime.backend}) cannot load shard ${name}: ${messageOf(error)}`, {
      cause: error,
    });
  }
}

/**
 * Run a session; onnxruntime's refusals become ShardInputError naming the shard.
 * @param {any} session an `ort.InferenceSession`
 * @param {Record<string, OrtTensor>} feeds
 * @param {string} name the shard's file name, for messages
 * @returns {Promise<Record<string, OrtTensor>>}
 */
export async function runSession(session, feeds, name) {
  try {
    return await session.run(feeds);
  } catch (error) {
    throw new ShardInputError(`shard ${name} refused its inputs: ${messageOf(error)}`, { cause: error });
  }
}

/**
 * Release a session's memory (WASM heap or GPU buffers).
 * @param {any} session
 * @returns {Promise<void>}
 */
export async function releaseSession(session) {
  await session.release();
}

/**
 * An `ort.Tensor` on the CPU.
 * @param {Runtime} runtime
 * @param {DType} type
 * @param {Float32Array | Uint16Array | BigInt64Array} data
 * @param {readonly number[]} dims
 * @returns {OrtTensor}
 */
export function makeTensor(runtime, type, data, dims) {
  return new runtime.ort.Tensor(type, data, [...dims]);
}

/**
 * The element values of a tensor on the CPU (downloads a GPU-resident tensor).
 * @param {OrtTensor & {location?: string, getData?: () => Promise<any>}} tensor
 * @returns {Promise<any>}
 */
export async function tensorData(tensor) {
  if (tensor.location && tensor.location !== 'cpu' && tensor.getData) return tensor.getData();
  return tensor.data;
}

/**
 * @param {unknown} error
 * @returns {string}
 */
function messageOf(error) {
  if (error instanceof Error) return error.message;
  return String(error);
}

// @ts-check
/**
 * The chunk protocol's frames (docs/chunks.md), the mirror of python_peer/core/chunks.py: requests
 * (`manifest`, `have`, `chunk`), the seeder's answers, and their parsing on both sides. Every request
 * is a CHUNK frame with a fresh random 16-byte session, step 0 and no tensors; its answer carries the
 * same session and step. A malformed request or answer is a `MetadataError` (code `bad_frame`).
 * Bytes travel as uint8 tensors. No DOM.
 */

import {
  CHUNK_BYTES,
  ChunkKind,
  DATA_TENSOR,
  MANIFEST_TENSOR,
  SESSION_ID_BYTES,
  SIGNED_TENSOR,
  HAVE_FILES_BYTES,
  MAX_PUBLISHED_FILES,
} from '../protocol/constants.js';
import { FrameType, MetadataError, makeFrame } from '../protocol/wire.js';

/** @typedef {import('../protocol/wire.js').Frame} Frame */
/**
 * A parsed request; `publisher`, `version`, `file` and `index` are set for `chunk` only.
 * @typedef {{kind: string, model: string, publisher: string, version: number, file: string, index: number}} ChunkRequest
 */
/** What a seeder says it holds. @typedef {{publisher: string, version: number, files: Set<string>}} Holding */

export { DATA_TENSOR, MANIFEST_TENSOR, SIGNED_TENSOR };

const MODEL_RE = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;
const HEX64 = /^[0-9a-f]{64}$/;
const REQUEST_KEYS = {
  [ChunkKind.MANIFEST]: ['kind', 'model'],
  [ChunkKind.HAVE]: ['kind', 'model'],
  [ChunkKind.CHUNK]: ['file', 'index', 'kind', 'model', 'publisher', 'version'],
};

/** @param {unknown} value */
const show = (value) => JSON.stringify(value)?.slice(0, 80) ?? String(value);

/**
 * A plain file name, as python_peer/core/manifest.py's `_plain_file_name`.
 * @param {unknown} name
 * @returns {name is string}
 */
export function plainFileName(name) {
  return (
    typeof name === 'string' &&
    name.length > 0 &&
    name.length <= 255 &&
    !/[/\\\0]/.test(name) &&
    !name.startsWith('.') &&
    name !== '..'
  );
}

/** @param {unknown} value @returns {string} */
function model(value) {
  if (typeof value !== 'string' || !MODEL_RE.test(value)) throw new MetadataError(`chunk protocol: model ${show(value)} is not a model name`);
  return value;
}

/** @param {unknown} value @returns {string} */
function file(value) {
  if (!plainFileName(value)) throw new MetadataError(`chunk protocol: file ${show(value)} is not a plain file name`);
  return value;
}

/** @param {string} name @param {unknown} value @returns {number} */
function count(name, value) {
  if (!Number.isSafeInteger(value) || /** @type {number} */ (value) < 0) {
    throw new MetadataError(`chunk protocol: ${name} ${show(value)} is not an integer 0..2^53-1`);
  }
  return /** @type {number} */ (value);
}

/** @param {Record<string, unknown>} meta @param {string[]} keys */
const sameKeys = (meta, keys) => {
  const have = Object.keys(meta).sort();
  return have.length === keys.length && have.every((k, i) => k === [...keys].sort()[i]);
};

const session = () => crypto.getRandomValues(new Uint8Array(SESSION_ID_BYTES));

/** @param {string} name */
export function manifestRequest(name) {
  return makeFrame({ type: FrameType.CHUNK, session: session(), step: 0, meta: { kind: ChunkKind.MANIFEST, model: name } });
}

/** @param {string} name */
export function haveRequest(name) {
  return makeFrame({ type: FrameType.CHUNK, session: session(), step: 0, meta: { kind: ChunkKind.HAVE, model: name } });
}

/**
 * @param {string} name
 * @param {string} publisher
 * @param {number} version
 * @param {string} fileName
 * @param {number} index
 */
export function chunkRequest(name, publisher, version, fileName, index) {
  const meta = { kind: ChunkKind.CHUNK, model: name, publisher, version, file: fileName, index };
  return makeFrame({ type: FrameType.CHUNK, session: session(), step: 0, meta });
}

/**
 * The request a CHUNK frame makes; MetadataError (`bad_frame`) when it is malformed.
 * @param {Frame} frame
 * @returns {ChunkRequest}
 */
export function parseRequest(frame) {
  if (frame.type !== FrameType.CHUNK || frame.tensors.length > 0) {
    throw new MetadataError('chunk protocol: a request is a CHUNK frame without tensors');
  }
  const meta = frame.meta;
  const kind = String(meta.kind);
  if (!(/** @type {string[]} */ (Object.values(ChunkKind))).includes(kind)) {
    throw new MetadataError(`chunk protocol: kind ${show(meta.kind)} is not one of ${Object.values(ChunkKind).join(', ')}`);
  }
  const keys = REQUEST_KEYS[/** @type {keyof typeof REQUEST_KEYS} */ (kind)];
  if (!sameKeys(meta, keys)) throw new MetadataError(`chunk protocol: a ${kind} request has exactly ${JSON.stringify(keys)}`);
  const name = model(meta.model);
  if (kind !== ChunkKind.CHUNK) return { kind, model: name, publisher: '', version: 0, file: '', index: 0 };
  if (typeof meta.publisher !== 'string' || !HEX64.test(meta.publisher)) {
    throw new MetadataError('chunk protocol: publisher is not a peer id (64 lowercase hex digits)');
  }
  return {
    kind,
    model: name,
    publisher: meta.publisher,
    version: count('version', meta.version),
    file: file(meta.file),
    index: count('index', meta.index),
  };
}

/** @param {string} name @param {Uint8Array} data */
const bytesTensor = (name, data) => ({ name, dtype: /** @type {const} */ ('uint8'), shape: [data.byteLength], data });

/**
 * @param {Frame} request
 * @param {string} name
 * @param {Uint8Array} signed  manifest.sig.json bytes
 * @param {Uint8Array} manifest  the manifest.json bytes it pins
 */
export function manifestAnswer(request, name, signed, manifest) {
  return makeFrame({
    type: FrameType.CHUNK,
    session: request.session,
    step: request.step,
    meta: { kind: ChunkKind.MANIFEST, model: name },
    tensors: [bytesTensor(SIGNED_TENSOR, signed), bytesTensor(MANIFEST_TENSOR, manifest)],
  });
}

/**
 * The files held, sorted, as many as fit `HAVE_FILES_BYTES` (the rest are not offered).
 * @param {Frame} request
 * @param {string} name
 * @param {string} publisher
 * @param {number} version
 * @param {Iterable<string>} files
 */
export function haveAnswer(request, name, publisher, version, files) {
  const kept = [];
  let size = 0;
  const encoder = new TextEncoder();
  for (const f of [...files].sort()) {
    size += encoder.encode(JSON.stringify(f)).byteLength + 1;
    if (size > HAVE_FILES_BYTES) break;
    kept.push(f);
  }
  const meta = { kind: ChunkKind.HAVE, model: name, publisher, version, files: kept };
  return makeFrame({ type: FrameType.CHUNK, session: request.session, step: request.step, meta });
}

/**
 * @param {Frame} request
 * @param {string} fileName
 * @param {number} index
 * @param {Uint8Array} data
 */
export function chunkAnswer(request, fileName, index, data) {
  return makeFrame({
    type: FrameType.CHUNK,
    session: request.session,
    step: request.step,
    meta: { kind: ChunkKind.CHUNK, file: fileName, index },
    tensors: [bytesTensor(DATA_TENSOR, data)],
  });
}

/**
 * @param {Frame} frame
 * @param {string} kind
 * @param {string[]} keys
 * @param {string[]} tensors
 */
function checkAnswer(frame, kind, keys, tensors) {
  if (frame.type !== FrameType.CHUNK || frame.meta.kind !== kind || !sameKeys(frame.meta, keys)) {
    throw new MetadataError(`chunk protocol: not a ${kind} answer (keys ${show(Object.keys(frame.meta).sort().slice(0, 8))})`);
  }
  const names = frame.tensors.map((t) => t.name);
  if (names.length !== tensors.length || names.some((n, i) => n !== tensors[i]) || frame.tensors.some((t) => t.dtype !== 'uint8')) {
    throw new MetadataError(`chunk protocol: a ${kind} answer carries uint8 tensors ${JSON.stringify(tensors)}`);
  }
}

/**
 * The (manifest.sig.json bytes, manifest.json bytes) of a manifest answer for `name`; not yet checked.
 * @param {Frame} frame
 * @param {string} name
 * @returns {{signed: Uint8Array, manifest: Uint8Array}}
 */
export function parseManifestAnswer(frame, name) {
  checkAnswer(frame, ChunkKind.MANIFEST, ['kind', 'model'], [SIGNED_TENSOR, MANIFEST_TENSOR]);
  if (frame.meta.model !== name) throw new MetadataError(`chunk protocol: asked for the manifest of ${name}, got ${show(frame.meta.model)}`);
  return { signed: /** @type {Uint8Array} */ (frame.tensors[0].data), manifest: /** @type {Uint8Array} */ (frame.tensors[1].data) };
}

/**
 * @param {Frame} frame
 * @param {string} name
 * @returns {Holding}
 */
export function parseHaveAnswer(frame, name) {
  checkAnswer(frame, ChunkKind.HAVE, ['files', 'kind', 'model', 'publisher', 'version'], []);
  const meta = frame.meta;
  if (meta.model !== name || typeof meta.publisher !== 'string' || !HEX64.test(meta.publisher)) {
    throw new MetadataError('chunk protocol: a have answer for another model, or without a publisher id');
  }
  const files = meta.files;
  if (!Array.isArray(files) || files.length > MAX_PUBLISHED_FILES) {
    throw new MetadataError(`chunk protocol: files is a list of at most ${MAX_PUBLISHED_FILES} names`);
  }
  return { publisher: meta.publisher, version: count('version', meta.version), files: new Set(files.map(file)) };
}

/**
 * The bytes of a chunk answer to the request for chunk `index` of `fileName` (not yet checked).
 * @param {Frame} frame
 * @param {string} fileName
 * @param {number} index
 * @returns {Uint8Array}
 */
export function parseChunkAnswer(frame, fileName, index) {
  checkAnswer(frame, ChunkKind.CHUNK, ['file', 'index', 'kind'], [DATA_TENSOR]);
  if (frame.meta.file !== fileName || frame.meta.index !== index) {
    throw new MetadataError(
      `chunk protocol: asked for chunk ${index} of ${fileName}, the answer is chunk ${show(frame.meta.index)} of ${show(frame.meta.file)}`,
    );
  }
  return /** @type {Uint8Array} */ (frame.tensors[0].data);
}

/**
 * Bytes `[offset, offset + length)` of chunk `index` of a file of `bytes` bytes.
 * @param {number} bytes
 * @param {number} index
 */
export function chunkRange(bytes, index) {
  const offset = index * CHUNK_BYTES;
  return { offset, length: Math.min(CHUNK_BYTES, bytes - offset) };
}

// @ts-check
/**
 * Frames (Python's `Frame`, `encode_frame`, `decode_frame`): the fixed header, canonical JSON
 * metadata and the 8-aligned tensor section, plus ERROR frames and their typed errors on the caller.
 * The decoder refuses anything `encodeFrame` would not have written, with the error code Python's
 * decoder gives for the same bytes.
 */

import { canonicalJson, checkJson, parseCanonicalObject } from './canonical.js';
import {
  ALIGN,
  DTYPE_SIZES,
  FrameFlags,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  MAX_ERROR_MESSAGE_BYTES,
  MAX_FRAME_BYTES,
  MAX_METADATA_BYTES,
  MAX_STEP,
  MAX_TENSORS,
  SESSION_ID_BYTES,
  VERSION,
} from './constants.js';
import {
  BadMagicError,
  DuplicateTensorError,
  FrameHeaderError,
  FrameLayoutError,
  LimitExceededError,
  MetadataError,
  REMOTE_ERRORS,
  RemoteError,
  TensorError,
  TruncatedFrameError,
  UnknownFlagsError,
  UnknownFrameTypeError,
  UnsupportedVersionError,
} from './errors.js';
import { checkTensorName, makeTensor, numelOf } from './tensors.js';
import { asBytes, hasOwn, isInt, isPlainObject, show, utf8ReplaceLength } from './values.js';

/** @typedef {import('./tensors.js').DType} DType */
/** @typedef {import('./tensors.js').WireTensor} WireTensor */
/** @typedef {import('./tensors.js').TensorInit} TensorInit */
/**
 * A JSON value as metadata holds it (its items are left untyped: JSDoc has no recursive aliases).
 * @typedef {null | boolean | number | string | any[] | {[key: string]: any}} JsonValue
 */

/**
 * One validated frame (Python's Frame); `meta` excludes the reserved "tensors" key.
 * @typedef {object} Frame
 * @property {number} type  a FrameType value
 * @property {Uint8Array} session  16 bytes
 * @property {number} step
 * @property {number} flags  FrameFlags bits
 * @property {{[key: string]: JsonValue}} meta
 * @property {readonly WireTensor[]} tensors
 */

/**
 * What `makeFrame` and `encodeFrame` take; absent fields default as in Python.
 * @typedef {object} FrameInit
 * @property {number} type
 * @property {Uint8Array} [session]
 * @property {number} [step]
 * @property {number} [flags]
 * @property {{[key: string]: unknown}} [meta]
 * @property {readonly TensorInit[]} [tensors]
 */

/** The session id of frames outside a session (16 zero bytes); a copy, the codec never reads it. */
export const NO_SESSION = new Uint8Array(SESSION_ID_BYTES);
/** Every flag bit this version defines; a frame with another bit set is refused. */
export const ALL_FLAGS = Object.values(FrameFlags).reduce((bits, bit) => bits | bit, 0);
export const NO_FLAGS = 0;

const MAGIC_BYTES = Uint8Array.from(MAGIC, (c) => c.charCodeAt(0));
const ZERO_SESSION = new Uint8Array(SESSION_ID_BYTES);
const TENSOR_KEYS = ['dtype', 'name', 'nbytes', 'offset', 'shape'];
/** @type {Map<number, string>} */
const FRAME_TYPE_NAMES = new Map(Object.entries(FrameType).map(([name, value]) => [value, name]));
const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** @param {number} n */
const align = (n) => Math.ceil(n / ALIGN) * ALIGN;

/**
 * The name of a frame type number ("FORWARD"), or undefined.
 * @param {number} type
 */
export function frameTypeName(type) {
  return FRAME_TYPE_NAMES.get(type);
}

/**
 * Python's `Frame.__post_init__` on already validated tensors; the order of checks is Python's.
 * @param {unknown} type
 * @param {unknown} session
 * @param {unknown} step
 * @param {unknown} flags
 * @param {unknown} meta
 * @param {readonly WireTensor[]} tensors
 * @returns {Frame}
 */
function checkedFrame(type, session, step, flags, meta, tensors) {
  if (typeof type !== 'number' || !FRAME_TYPE_NAMES.has(type)) {
    throw new UnknownFrameTypeError(
      `frame type ${show(type)} is not one of ${[...FRAME_TYPE_NAMES.keys()].join(', ')}`,
    );
  }
  const isFlags = typeof flags === 'number' && Number.isInteger(flags) && flags >= 0 && flags <= 0x7fffffff;
  if (!isFlags || flags & ~ALL_FLAGS) {
    throw new UnknownFlagsError(
      `flags ${show(flags)} set bits outside 0x${ALL_FLAGS.toString(16).padStart(4, '0')}`,
    );
  }
  if (!(session instanceof Uint8Array) || session.length !== SESSION_ID_BYTES) {
    throw new FrameHeaderError(`session id must be ${SESSION_ID_BYTES} bytes, got ${show(session)}`);
  }
  if (typeof step !== 'number' || !Number.isInteger(step) || step < 0 || step > MAX_STEP) {
    throw new FrameHeaderError(`step ${show(step)} is not in 0..${MAX_STEP}`);
  }
  if (!isPlainObject(meta)) throw new MetadataError(`metadata must be a plain object, got ${show(meta)}`);
  if (hasOwn(meta, 'tensors')) {
    throw new MetadataError('metadata key "tensors" is reserved for the tensor descriptors');
  }
  checkJson(meta, 0, '$');
  if (type === FrameType.ERROR) {
    const code = hasOwn(meta, 'code') ? meta.code : undefined;
    const message = hasOwn(meta, 'message') ? meta.message : undefined;
    if (typeof code !== 'string' || typeof message !== 'string') {
      throw new MetadataError(`ERROR frame metadata needs string code and message, got ${show(meta)}`);
    }
    if (utf8ReplaceLength(message) > MAX_ERROR_MESSAGE_BYTES) {
      throw new MetadataError(`ERROR message is over ${MAX_ERROR_MESSAGE_BYTES} bytes`);
    }
  }
  if (tensors.length > MAX_TENSORS) {
    throw new LimitExceededError(`${tensors.length} tensors is over the limit of ${MAX_TENSORS}`);
  }
  const names = tensors.map((t) => t.name);
  if (new Set(names).size !== names.length) {
    throw new DuplicateTensorError(`tensor names ${show(names)} are not unique`);
  }
  return Object.freeze({
    type,
    session: session.slice(),
    step,
    flags,
    meta: /** @type {{[key: string]: JsonValue}} */ (meta),
    tensors: Object.freeze([...tensors]),
  });
}

/**
 * A validated frame, as Python's `Frame(...)`: refuses what a peer's decoder would refuse.
 * @param {FrameInit} init
 * @returns {Frame}
 */
export function makeFrame(init) {
  const { type, session = ZERO_SESSION, step = 0, flags = NO_FLAGS, meta = {}, tensors = [] } = init;
  if (!Array.isArray(tensors)) throw new TypeError(`tensors must be an array, got ${show(tensors)}`);
  const checked = tensors.map((t) => makeTensor(t?.name, t?.dtype, t?.shape, t?.data));
  return checkedFrame(type, session, step, flags, meta, checked);
}

/**
 * The tensor called `name`; a missing one is the sender's mistake, so it is a MetadataError.
 * @param {Frame} frame
 * @param {string} name
 */
export function frameTensor(frame, name) {
  const found = frame.tensors.find((t) => t.name === name);
  if (found === undefined) {
    throw new MetadataError(
      `${frameTypeName(frame.type)} frame has no tensor ${show(name)} ` +
        `(has ${show(frame.tensors.map((t) => t.name))})`,
    );
  }
  return found;
}

/**
 * Write a frame in its one canonical encoding (Python's `encode_frame`).
 * @param {FrameInit | Frame} frame
 * @param {{maxFrameBytes?: number}} [options]
 * @returns {Uint8Array}
 */
export function encodeFrame(frame, { maxFrameBytes = MAX_FRAME_BYTES } = {}) {
  const f = makeFrame(frame);
  /** @type {number[]} */
  const offsets = [];
  let end = 0;
  for (const tensor of f.tensors) {
    offsets.push(align(end));
    end = offsets[offsets.length - 1] + tensor.data.byteLength;
  }
  /** @type {{[key: string]: unknown}} */
  const meta = { ...f.meta };
  if (f.tensors.length) {
    meta.tensors = f.tensors.map((t, i) => ({
      dtype: t.dtype,
      name: t.name,
      nbytes: t.data.byteLength,
      offset: offsets[i],
      shape: [...t.shape],
    }));
  }
  const metaBytes = UTF8_ENCODER.encode(canonicalJson(meta));
  if (metaBytes.length > MAX_METADATA_BYTES) {
    throw new LimitExceededError(`metadata of ${metaBytes.length} bytes is over ${MAX_METADATA_BYTES}`);
  }
  const start = align(HEADER_SIZE + metaBytes.length);
  if (start + end > maxFrameBytes) {
    throw new LimitExceededError(`frame of ${start + end} bytes is over the limit of ${maxFrameBytes}`);
  }
  if (end > 0xffffffff) {
    throw new LimitExceededError(`tensor section of ${end} bytes does not fit the u32 length`);
  }
  const out = new Uint8Array(start + end);
  const view = new DataView(out.buffer);
  out.set(MAGIC_BYTES, 0);
  out[4] = VERSION;
  out[5] = f.type;
  view.setUint16(6, f.flags, true);
  out.set(f.session, 8);
  view.setUint32(24, f.step, true);
  view.setUint32(28, metaBytes.length, true);
  view.setUint32(32, end, true);
  out.set(metaBytes, HEADER_SIZE);
  f.tensors.forEach((t, i) => out.set(t.data, start + offsets[i]));
  return out;
}

/**
 * @param {object} obj
 * @param {readonly string[]} keys
 */
function hasExactly(obj, keys) {
  const own = Object.keys(obj);
  return own.length === keys.length && keys.every((k) => hasOwn(obj, k));
}

/**
 * @param {Uint8Array} bytes
 * @param {number} from
 * @param {number} to
 */
function anyNonZero(bytes, from, to) {
  for (let i = from; i < to; i++) if (bytes[i] !== 0) return true;
  return false;
}

/**
 * Parse and validate a frame (Python's `decode_frame`): malformed input throws the WireError subclass
 * Python throws for the same bytes, nothing else. Tensor data are views onto `data`.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @param {{maxFrameBytes?: number}} [options]
 * @returns {Frame}
 */
export function decodeFrame(data, { maxFrameBytes = MAX_FRAME_BYTES } = {}) {
  const bytes = asBytes(data, 'a frame');
  const n = bytes.byteLength;
  if (n > maxFrameBytes) {
    throw new LimitExceededError(`frame of ${n} bytes is over the limit of ${maxFrameBytes}`);
  }
  if (n < HEADER_SIZE) {
    throw new TruncatedFrameError(`frame of ${n} bytes is shorter than the ${HEADER_SIZE}-byte header`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, n);
  if (MAGIC_BYTES.some((b, i) => bytes[i] !== b)) {
    throw new BadMagicError(`frame starts with ${show(Array.from(bytes.subarray(0, 4)))}, not ${MAGIC}`);
  }
  const version = bytes[4];
  const type = bytes[5];
  const flags = view.getUint16(6, true);
  const step = view.getUint32(24, true);
  const metaLen = view.getUint32(28, true);
  const tensorsLen = view.getUint32(32, true);
  if (version !== VERSION) {
    throw new UnsupportedVersionError(
      `wire version ${version} is not supported (this peer speaks ${VERSION})`,
    );
  }
  if (!FRAME_TYPE_NAMES.has(type)) {
    throw new UnknownFrameTypeError(
      `frame type ${type} is not one of ${[...FRAME_TYPE_NAMES.keys()].join(', ')}`,
    );
  }
  if (flags & ~ALL_FLAGS) {
    throw new UnknownFlagsError(`flags 0x${flags.toString(16)} set bits outside 0x${ALL_FLAGS.toString(16)}`);
  }
  if (metaLen > MAX_METADATA_BYTES) {
    throw new LimitExceededError(`metadata of ${metaLen} bytes is over the limit of ${MAX_METADATA_BYTES}`);
  }
  const start = align(HEADER_SIZE + metaLen);
  if (start + tensorsLen > maxFrameBytes) {
    throw new LimitExceededError(`declared frame of ${start + tensorsLen} bytes is over ${maxFrameBytes}`);
  }
  if (n < start + tensorsLen) {
    throw new TruncatedFrameError(`frame of ${n} bytes is shorter than its declared ${start + tensorsLen}`);
  }
  if (n > start + tensorsLen) {
    throw new FrameLayoutError(`frame of ${n} bytes is longer than its declared ${start + tensorsLen}`);
  }
  if (anyNonZero(bytes, HEADER_SIZE + metaLen, start)) {
    throw new FrameLayoutError('padding after the metadata is not zero');
  }

  let text;
  try {
    text = UTF8_DECODER.decode(bytes.slice(HEADER_SIZE, HEADER_SIZE + metaLen));
  } catch (exc) {
    throw new MetadataError(`metadata is not UTF-8 JSON: ${/** @type {Error} */ (exc).message}`, {
      cause: exc,
    });
  }
  const meta = parseCanonicalObject(text);

  const hasTensors = hasOwn(meta, 'tensors');
  const descriptors = hasTensors ? meta.tensors : [];
  delete meta.tensors;
  if (hasTensors && (!Array.isArray(descriptors) || descriptors.length === 0)) {
    throw new MetadataError('metadata "tensors" must be a non-empty list when present');
  }
  const list = /** @type {unknown[]} */ (descriptors);
  if (list.length > MAX_TENSORS) {
    throw new LimitExceededError(`${list.length} tensors is over the limit of ${MAX_TENSORS}`);
  }
  const section = bytes.subarray(start);
  /** @type {WireTensor[]} */
  const tensors = [];
  let end = 0;
  for (const desc of list) {
    if (!isPlainObject(desc) || !hasExactly(desc, TENSOR_KEYS)) {
      throw new MetadataError(
        `tensor descriptor ${show(desc)} must have exactly the keys ${TENSOR_KEYS.join(', ')}`,
      );
    }
    const { name, dtype, shape, offset, nbytes } = desc;
    if (!Array.isArray(shape) || !isInt(offset) || !isInt(nbytes)) {
      throw new MetadataError(`tensor descriptor ${show(desc)}: shape is a list, offset and nbytes integers`);
    }
    const numel = numelOf(dtype, shape);
    if (BigInt(nbytes) !== numel * BigInt(DTYPE_SIZES[/** @type {DType} */ (dtype)])) {
      throw new TensorError(
        `tensor ${show(name)}: shape ${show(shape)} of ${dtype} does not fill its ${nbytes} bytes`,
      );
    }
    if (BigInt(offset) !== BigInt(align(end)) || BigInt(offset) + BigInt(nbytes) > BigInt(tensorsLen)) {
      throw new FrameLayoutError(
        `tensor ${show(name)} at ${offset}+${nbytes} is not where the layout puts it`,
      );
    }
    const at = Number(offset);
    if (anyNonZero(section, end, at)) {
      throw new FrameLayoutError(`padding before tensor ${show(name)} is not zero`);
    }
    checkTensorName(name);
    end = at + Number(nbytes);
    tensors.push(
      Object.freeze({
        name,
        dtype: /** @type {DType} */ (dtype),
        shape: Object.freeze(shape.map(Number)),
        data: section.subarray(at, end),
      }),
    );
  }
  if (end !== tensorsLen) {
    throw new FrameLayoutError(`tensor section is ${tensorsLen} bytes but its tensors end at ${end}`);
  }
  return checkedFrame(type, bytes.subarray(8, 24), step, flags, meta, tensors);
}

/**
 * Cut a message to MAX_ERROR_MESSAGE_BYTES of UTF-8 on a character boundary, as Python's
 * `encode("utf-8", "replace")[:1024].decode("utf-8", "ignore")` (a lone surrogate becomes "?").
 * @param {string} message
 */
function capMessage(message) {
  const text = String(message).replace(LONE_SURROGATE, '?');
  const raw = UTF8_ENCODER.encode(text);
  if (raw.length <= MAX_ERROR_MESSAGE_BYTES) return text;
  let cut = MAX_ERROR_MESSAGE_BYTES;
  let lead = cut - 1;
  while (lead > 0 && (raw[lead] & 0xc0) === 0x80) lead--;
  const width = raw[lead] < 0x80 ? 1 : raw[lead] >= 0xf0 ? 4 : raw[lead] >= 0xe0 ? 3 : 2;
  if (lead + width > cut) cut = lead;
  return UTF8_DECODER.decode(raw.subarray(0, cut));
}

/**
 * The ERROR frame a peer sends back; the message is cut to MAX_ERROR_MESSAGE_BYTES of UTF-8.
 * @param {Uint8Array} session
 * @param {number} step
 * @param {string} code  an ErrorCode value (or a newer peer's code)
 * @param {string} message
 */
export function errorFrame(session, step, code, message) {
  const meta = { code: String(code), message: capMessage(message) };
  return makeFrame({ type: FrameType.ERROR, session, step, meta });
}

/**
 * On the caller: throw the typed RemoteError an ERROR frame stands for; other frames pass.
 * An unknown code (a newer peer) throws the base RemoteError with that code.
 * @param {Frame} frame
 */
export function raiseForError(frame) {
  if (frame.type !== FrameType.ERROR) return;
  const code = String(frame.meta.code);
  const message = String(frame.meta.message);
  const Cls = hasOwn(REMOTE_ERRORS, code) ? REMOTE_ERRORS[code] : RemoteError;
  throw new Cls(`peer answered ${code}: ${message}`, { code });
}

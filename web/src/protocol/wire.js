// @ts-check
/**
 * The binary frame format peers exchange over WebRTC data channels: the mirror of
 * `python_peer/core/wire.py`, constant for constant and error code for error code. This module is the
 * codec's public entry; it only re-exports the modules that hold each idea:
 *
 * - `constants.js`  sizes, limits and enums, generated from the Python core (never edited by hand)
 * - `errors.js`     the error hierarchy (drawn there) and the RemoteError subclass of each ErrorCode
 * - `canonical.js`  canonical JSON: the one text metadata may be, read with JSON.parse
 * - `tensors.js`    tensors: validation, packing numbers, typed-array views, the NaN/Inf check
 * - `float16.js`    float16 <-> number, rounded as Python's struct does
 * - `frames.js`     frames: encode, decode, ERROR frames and their typed errors on the caller
 * - `chunks.js`     cutting messages into data channel chunks and joining them back
 * - `values.js`     small helpers the modules share
 *
 * `docs/wire.md` is the implementer's page, `tests/vectors/` holds the golden bytes both codecs decode;
 * `web/test/wire.test.js` (Node) and `tests/browser/test_wire_vectors.py` (Chromium, against the
 * Python codec) check them. No dependencies, no DOM, no clock: it runs in a page, a Worker or Node.
 */

export {
  ALIGN,
  CHUNK_HEADER_SIZE,
  CHUNK_MAGIC,
  DEFAULT_CHUNK_SIZE,
  DTYPE_SIZES,
  ErrorCode,
  FrameFlags,
  FrameType,
  HEADER_SIZE,
  MAGIC,
  MAX_CHUNKS,
  MAX_DIM,
  MAX_ERROR_MESSAGE_BYTES,
  MAX_FRAME_BYTES,
  MAX_MESSAGE_ID,
  MAX_META_DEPTH,
  MAX_METADATA_BYTES,
  MAX_NAME_BYTES,
  MAX_RANK,
  MAX_SAFE_INT,
  MAX_STEP,
  MAX_TENSORS,
  SESSION_ID_BYTES,
  VERSION,
} from './constants.js';
export * from './errors.js';
export { JSON_MAX_NESTING, canonicalJson } from './canonical.js';
export {
  checkFinite,
  floatTensor,
  makeTensor,
  tensorAsFloat16Bits,
  tensorAsFloat32,
  tensorAsInt64,
  tensorFromValues,
  tensorToFloat32,
  tensorValues,
} from './tensors.js';
export {
  float16BitsToNumber,
  float16ToFloat32Array,
  float32ToFloat16Array,
  numberToFloat16Bits,
} from './float16.js';
export {
  ALL_FLAGS,
  NO_FLAGS,
  NO_SESSION,
  decodeFrame,
  encodeFrame,
  errorFrame,
  frameTensor,
  frameTypeName,
  makeFrame,
  raiseForError,
} from './frames.js';
export { Reassembler, chunkMessage } from './chunks.js';

/** @typedef {import('./tensors.js').DType} DType */
/** @typedef {import('./tensors.js').WireTensor} WireTensor */
/** @typedef {import('./tensors.js').TensorInit} TensorInit */
/** @typedef {import('./frames.js').JsonValue} JsonValue */
/** @typedef {import('./frames.js').Frame} Frame */
/** @typedef {import('./frames.js').FrameInit} FrameInit */

// @ts-check
/**
 * The binary frame format peers exchange over WebRTC data channels: a byte-for-byte mirror of
 * `python_peer/core/wire.py`, constant for constant, check for check, error class for error class.
 *
 * `docs/wire.md` is the implementer's page, `tests/vectors/` holds the golden bytes both codecs decode,
 * and `tests/browser/test_wire_vectors.py` runs this module in Chromium against the Python codec.
 * No dependencies, no DOM, no clock: it runs in a page, a Worker or Node alike.
 *
 * Metadata is valid only if it is exactly what Python's
 * `json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes. `JSON.parse`
 * cannot tell `1.0` from `1` nor hold integers past 2**53, and Python's decoder reaches the tensor
 * checks with such values before it refuses them, so this module parses JSON the way Python's `json`
 * does and writes it back the way `json.dumps` does; only then are the refusals, and their order, the
 * same. Encoding follows the same writer.
 *
 * Errors (names and `code`s as in `python_peer/core/errors.py`)::
 *
 *     AI4AllError
 *     └── CoreError
 *         ├── WireError (code "bad_frame")      bytes that are not a valid frame or chunk
 *         │   ├── TruncatedFrameError
 *         │   ├── FrameHeaderError
 *         │   │   ├── BadMagicError, UnsupportedVersionError
 *         │   │   └── UnknownFrameTypeError, UnknownFlagsError
 *         │   ├── FrameLayoutError
 *         │   ├── LimitExceededError
 *         │   ├── MetadataError
 *         │   │   └── DuplicateTensorError
 *         │   ├── TensorError (code "bad_shape")
 *         │   │   └── NonFiniteError (code "non_finite")
 *         │   └── ChunkError
 *         └── RemoteError (code from the ERROR frame) and one subclass per ErrorCode
 *
 * Misuse of the API that Python answers with ValueError or TypeError (a message id out of range, data
 * that is not bytes) throws RangeError or TypeError here.
 */

// --- constants (python_peer/core/wire.py) ------------------------------------------------------------

/** The frame magic, ASCII. */
export const MAGIC = 'A4AF';
export const VERSION = 1;
export const HEADER_SIZE = 36;
export const SESSION_ID_BYTES = 16;
export const ALIGN = 8;
/** The session id of frames outside a session (16 zero bytes); a copy, the codec never reads it. */
export const NO_SESSION = new Uint8Array(SESSION_ID_BYTES);

export const MAX_FRAME_BYTES = 64 * 1024 * 1024;
export const MAX_METADATA_BYTES = 64 * 1024;
export const MAX_TENSORS = 16;
export const MAX_RANK = 8;
export const MAX_DIM = 2 ** 31 - 1;
export const MAX_NAME_BYTES = 64;
export const MAX_META_DEPTH = 16;
export const MAX_SAFE_INT = 2 ** 53 - 1;
export const MAX_ERROR_MESSAGE_BYTES = 1024;
export const MAX_STEP = 2 ** 32 - 1;

/** The chunk magic, ASCII. */
export const CHUNK_MAGIC = 'A4AC';
export const CHUNK_HEADER_SIZE = 12;
export const DEFAULT_CHUNK_SIZE = 16 * 1024;
export const MAX_CHUNKS = 2 ** 16 - 1;
export const MAX_MESSAGE_ID = 2 ** 32 - 1;

/**
 * Python's json module raises RecursionError (and the decoder MetadataError) on metadata nested about
 * 1000 levels deep, a bound that depends on the caller's stack; this parser refuses past this depth.
 * Between MAX_META_DEPTH and here both codecs reach the tensor checks before refusing the depth.
 */
export const JSON_MAX_NESTING = 900;
/** CPython's default `sys.get_int_max_str_digits()`: json.loads refuses longer integers. */
export const PY_INT_MAX_STR_DIGITS = 4300;

/** @typedef {'float32' | 'float16' | 'int64'} DType */

/** Bytes per element of each dtype the wire carries. */
export const DTYPE_SIZES = Object.freeze(
  /** @type {Record<DType, number>} */ ({ float32: 4, float16: 2, int64: 8 }),
);

/** What a frame asks for or answers; the number is the header's `type` byte. */
export const FrameType = Object.freeze({
  OPEN: 1,
  FORWARD: 2,
  RESULT: 3,
  CLOSE: 4,
  ERROR: 5,
  PING: 6,
  PONG: 7,
  GOSSIP: 8,
});

/** Header flag bits; a frame with a bit not defined here is refused. */
export const FrameFlags = Object.freeze({ PREFILL: 1, REPLAY: 2 });
export const ALL_FLAGS = FrameFlags.PREFILL | FrameFlags.REPLAY;
export const NO_FLAGS = 0;

/** The `code` of an ERROR frame; each maps to a RemoteError subclass on the caller. */
export const ErrorCode = Object.freeze({
  BAD_FRAME: 'bad_frame',
  BAD_SHAPE: 'bad_shape',
  NON_FINITE: 'non_finite',
  UNKNOWN_SESSION: 'unknown_session',
  OUT_OF_ORDER: 'out_of_order',
  SESSION_REFUSED: 'session_refused',
  OVERLOADED: 'overloaded',
  INTERNAL: 'internal',
  TIMEOUT: 'timeout',
  PAYMENT_REQUIRED: 'payment_required',
});

const MAGIC_BYTES = Uint8Array.from(MAGIC, (c) => c.charCodeAt(0));
const CHUNK_MAGIC_BYTES = Uint8Array.from(CHUNK_MAGIC, (c) => c.charCodeAt(0));
const ZERO_SESSION = new Uint8Array(SESSION_ID_BYTES);
const TENSOR_KEYS = ['dtype', 'name', 'nbytes', 'offset', 'shape'];
const FRAME_TYPE_NAMES = new Map(Object.entries(FrameType).map(([name, value]) => [value, name]));
const UTF8_DECODER = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const UTF8_ENCODER = new TextEncoder();
const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;
const HAS_LONE_SURROGATE = /[\uD800-\uDFFF]/u;

// --- errors (python_peer/core/errors.py) --------------------------------------------------------------

/** Root of every AI4All error that carries a message meant for a user. */
export class AI4AllError extends Error {
  /**
   * @param {string} [message]
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name; // the Python class name; plain ES modules keep class names
  }
}

/** Base class of every error of the core (the wire codec here). */
export class CoreError extends AI4AllError {}

/** Bytes from a peer are not a valid frame or chunk; `code` is what a peer sends back for it. */
export class WireError extends CoreError {
  static code = 'bad_frame';

  /** @returns {string} the error code a peer puts in the ERROR frame it sends back */
  get code() {
    return /** @type {typeof WireError} */ (this.constructor).code;
  }
}

/** The bytes end before the fixed header, or before the lengths the header declares. */
export class TruncatedFrameError extends WireError {}
/** A header field holds a value this version of the wire format does not know. */
export class FrameHeaderError extends WireError {}
/** The bytes do not start with the frame magic: not an AI4All frame at all. */
export class BadMagicError extends FrameHeaderError {}
/** The frame uses another wire version; the peers must upgrade to talk. */
export class UnsupportedVersionError extends FrameHeaderError {}
/** The frame type number is not one this version defines. */
export class UnknownFrameTypeError extends FrameHeaderError {}
/** Flag bits are set that this version does not define. */
export class UnknownFlagsError extends FrameHeaderError {}
/** Declared lengths, offsets or padding disagree with the bytes actually present. */
export class FrameLayoutError extends WireError {}
/** A frame, its metadata, its tensor count or rank, or a reassembly buffer is over its bound. */
export class LimitExceededError extends WireError {}
/** The metadata is not canonical UTF-8 JSON of an object holding only values the format allows. */
export class MetadataError extends WireError {}
/** Two tensors in one frame have the same name. */
export class DuplicateTensorError extends MetadataError {}
/** A tensor's dtype is unknown, a dim is negative or too large, or shape and byte length disagree. */
export class TensorError extends WireError {
  static code = 'bad_shape';
}
/** A floating point tensor holds NaN or Inf. */
export class NonFiniteError extends TensorError {
  static code = 'non_finite';
}
/** A data channel chunk is malformed, or disagrees with the other chunks of its message. */
export class ChunkError extends WireError {}

/** A peer answered with an ERROR frame: `code` says why, the message is the peer's own words. */
export class RemoteError extends CoreError {
  static code = 'internal';

  /**
   * @param {string} message
   * @param {{code?: string}} [options] the code from the ERROR frame, when not the class's own
   */
  constructor(message, { code } = {}) {
    super(message);
    /** @type {string} */
    this.code = code ?? /** @type {typeof RemoteError} */ (new.target).code;
  }
}

/** bad_frame: the peer could not decode a frame we sent. */
export class RemoteBadFrameError extends RemoteError {
  static code = 'bad_frame';
}
/** bad_shape: the peer refused a tensor we sent for its dtype or shape. */
export class RemoteBadShapeError extends RemoteError {
  static code = 'bad_shape';
}
/** non_finite: the peer found NaN or Inf in a tensor we sent. */
export class RemoteNonFiniteError extends RemoteError {
  static code = 'non_finite';
}
/** The peer holds no session with that id: it restarted, or the session expired. */
export class UnknownSessionError extends RemoteError {
  static code = 'unknown_session';
}
/** A step reached the peer before the step it expected. */
export class OutOfOrderError extends RemoteError {
  static code = 'out_of_order';
}
/** The peer will not open the session (wrong model or span, bad parameters, or a ban). */
export class SessionRefusedError extends RemoteError {
  static code = 'session_refused';
}
/** The peer has no compute or KV-cache room now; route around it. */
export class OverloadedError extends RemoteError {
  static code = 'overloaded';
}
/** The peer failed while running the step; the failure is on its side. */
export class RemoteInternalError extends RemoteError {
  static code = 'internal';
}
/** The peer gave up waiting (for the next step, or for a peer further down the chain). */
export class RemoteTimeoutError extends RemoteError {
  static code = 'timeout';
}
/** The caller's ledger balance does not cover the request. */
export class PaymentRequiredError extends RemoteError {
  static code = 'payment_required';
}

/** @type {Readonly<Record<string, typeof RemoteError>>} */
export const REMOTE_ERRORS = Object.freeze({
  [ErrorCode.BAD_FRAME]: RemoteBadFrameError,
  [ErrorCode.BAD_SHAPE]: RemoteBadShapeError,
  [ErrorCode.NON_FINITE]: RemoteNonFiniteError,
  [ErrorCode.UNKNOWN_SESSION]: UnknownSessionError,
  [ErrorCode.OUT_OF_ORDER]: OutOfOrderError,
  [ErrorCode.SESSION_REFUSED]: SessionRefusedError,
  [ErrorCode.OVERLOADED]: OverloadedError,
  [ErrorCode.INTERNAL]: RemoteInternalError,
  [ErrorCode.TIMEOUT]: RemoteTimeoutError,
  [ErrorCode.PAYMENT_REQUIRED]: PaymentRequiredError,
});

// --- types ------------------------------------------------------------------------------------------

/** @typedef {null | boolean | number | string | JsonValue[] | {[key: string]: JsonValue}} JsonValue */

/**
 * One tensor on the wire (Python's WireTensor). `data` is raw little-endian bytes in C order; a decoded
 * tensor's data is a view onto the frame's bytes, and `makeTensor` does not copy either.
 * @typedef {object} WireTensor
 * @property {string} name
 * @property {DType} dtype
 * @property {readonly number[]} shape
 * @property {Uint8Array} data
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

/**
 * A tensor before validation; `data` may be any typed array over little-endian bytes.
 * @typedef {object} TensorInit
 * @property {string} name
 * @property {string} dtype
 * @property {readonly (number | bigint)[]} shape
 * @property {ArrayBufferView | ArrayBuffer} data
 */

// --- small helpers ----------------------------------------------------------------------------------

/** @param {number} n */
const align = (n) => Math.ceil(n / ALIGN) * ALIGN;

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
 * @param {object} obj
 * @param {string} key
 */
const hasOwn = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/**
 * A Python int: a JS integer number, or a bigint (the JSON reader's form of integers past 2**53).
 * @param {unknown} value
 * @returns {value is number | bigint}
 */
const isInt = (value) => typeof value === 'bigint' || (typeof value === 'number' && Number.isInteger(value));

/**
 * Bytes of `text` as Python's `text.encode("utf-8", "replace")` counts them (a lone surrogate is "?").
 * @param {string} text
 */
function utf8ReplaceLength(text) {
  let n = 0;
  for (const ch of text) {
    const cp = /** @type {number} */ (ch.codePointAt(0));
    n += cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp >= 0xd800 && cp <= 0xdfff ? 1 : cp < 0x10000 ? 3 : 4;
  }
  return n;
}

/**
 * A short, readable rendering of a value for error messages.
 * @param {unknown} value
 */
function show(value) {
  if (value instanceof PyFloat) return pyFloatRepr(value.value, false);
  if (typeof value === 'bigint') return value.toString();
  try {
    const text = JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
    return text === undefined ? String(value) : text.length > 200 ? `${text.slice(0, 200)}...` : text;
  } catch {
    return String(value);
  }
}

/**
 * View any binary input as bytes, without copying.
 * @param {ArrayBuffer | ArrayBufferView} data
 * @param {string} what
 */
function asBytes(data, what) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const shared = typeof SharedArrayBuffer !== 'undefined' && data instanceof SharedArrayBuffer;
  if (data instanceof ArrayBuffer || shared) {
    return new Uint8Array(data);
  }
  throw new TypeError(`${what} must be an ArrayBuffer or a typed array, got ${typeof data}`);
}

// --- canonical JSON, the way Python's json module reads and writes it -------------------------------

/** A JSON number with a fraction or exponent: Python's float, which JS numbers cannot tell from int. */
class PyFloat {
  /** @param {number} value */
  constructor(value) {
    this.value = value;
  }
}

/**
 * `repr(float)` in Python: shortest round-trip digits (as JS), in Python's layout (`1e-07`, `1e+16`,
 * `100.0`). `jsonSafe` refuses NaN and Inf as `json.dumps(allow_nan=False)` does.
 * @param {number} x
 * @param {boolean} [jsonSafe]
 */
function pyFloatRepr(x, jsonSafe = true) {
  if (!Number.isFinite(x)) {
    if (jsonSafe) {
      throw new MetadataError(`metadata cannot be written as canonical JSON: ${x} is out of range`);
    }
    return Number.isNaN(x) ? 'nan' : x > 0 ? 'inf' : '-inf';
  }
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const text = String(Math.abs(x)); // ECMAScript: the shortest digits that round-trip, closest to x
  const e = text.indexOf('e');
  const mantissa = e < 0 ? text : text.slice(0, e);
  const exponent = e < 0 ? 0 : Number(text.slice(e + 1));
  const dot = mantissa.indexOf('.');
  const fraction = dot < 0 ? '' : mantissa.slice(dot + 1);
  let digits = (dot < 0 ? mantissa : mantissa.slice(0, dot)) + fraction;
  digits = digits.replace(/^0+/, '');
  const decpt = exponent - fraction.length + digits.length; // x = 0.DIGITS * 10**decpt
  digits = digits.replace(/0+$/, '');
  const sign = x < 0 ? '-' : '';
  if (decpt <= -4 || decpt > 16) {
    const exp = decpt - 1;
    const head = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${head}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (decpt <= 0) return `${sign}0.${'0'.repeat(-decpt)}${digits}`;
  if (decpt >= digits.length) return `${sign}${digits}${'0'.repeat(decpt - digits.length)}.0`;
  return `${sign}${digits.slice(0, decpt)}.${digits.slice(decpt)}`;
}

/**
 * Python's string escapes with ensure_ascii=False: `"`, `\`, and controls below U+0020 (as \b \f \n \r
 * \t or lowercase \u00xx); everything else raw, U+007F, U+2028, U+2029 and `/` included.
 * @param {string} text
 */
function quote(text) {
  if (HAS_LONE_SURROGATE.test(text)) {
    throw new MetadataError(
      `metadata cannot be written as canonical JSON: ${show(text)} holds a lone surrogate (not UTF-8)`,
    );
  }
  return `"${text.replace(/["\\\u0000-\u001f]/g, escapeChar)}"`;
}

/** @type {Record<string, string>} */
const SHORT_ESCAPES = {
  '"': '\\"',
  '\\': '\\\\',
  '\b': '\\b',
  '\f': '\\f',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
};
/** @type {Record<string, string>} */
const UNESCAPES = { '"': '"', '\\': '\\', '/': '/', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t' };

/** @param {string} ch */
function escapeChar(ch) {
  return SHORT_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
}

/**
 * Order strings by code point, as Python sorts str (UTF-16 order differs past U+FFFF).
 * @param {string} a
 * @param {string} b
 */
function byCodePoint(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x !== y) {
      // lift surrogates above U+E000..U+FFFF, as code points past U+FFFF are
      x = x >= 0xd800 ? (x >= 0xe000 ? x - 0x800 : x + 0x2000) : x;
      y = y >= 0xd800 ? (y >= 0xe000 ? y - 0x800 : y + 0x2000) : y;
      return x - y;
    }
  }
  return a.length - b.length;
}

/**
 * `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`.
 * Takes what `checkJson` accepts and what `parsePythonJson` returns (PyFloat and bigint included).
 * @param {unknown} value
 * @returns {string}
 */
export function canonicalJson(value) {
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new MetadataError(`metadata holds the float ${value}`);
    return Object.is(value, -0) ? '0' : String(value);
  }
  if (value instanceof PyFloat) return pyFloatRepr(value.value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (isPlainObject(value)) {
    const keys = Object.keys(value).sort(byCodePoint);
    return `{${keys.map((k) => `${quote(k)}:${canonicalJson(value[k])}`).join(',')}}`;
  }
  throw new MetadataError(`metadata cannot be written as canonical JSON: a ${typeof value}`);
}

const NUMBER = /-?(?:0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?/y;
/** @type {ReadonlyArray<[string, null | boolean | number]>} */
const LITERALS = [
  ['null', null],
  ['true', true],
  ['false', false],
  ['NaN', NaN], // Python's json reads these; writing them back fails, so they are refused
  ['Infinity', Infinity],
  ['-Infinity', -Infinity],
];
const HEX4 = /^[0-9a-fA-F]{4}$/;

/**
 * Parse JSON as Python's `json.loads` does: integers of any size (bigint past 2**53 - 1), numbers
 * with a fraction or exponent as PyFloat, NaN and Infinity accepted, duplicate keys last-wins.
 * @param {string} text
 * @returns {unknown}
 */
function parsePythonJson(text) {
  let pos = 0;
  /** @param {string} why */
  const fail = (why) => new MetadataError(`metadata is not UTF-8 JSON: ${why} at char ${pos}`);
  const skipSpace = () => {
    while (pos < text.length) {
      const c = text.charCodeAt(pos);
      if (c !== 0x20 && c !== 0x09 && c !== 0x0a && c !== 0x0d) break;
      pos++;
    }
  };
  const readString = () => {
    pos++; // the opening quote
    let out = '';
    let start = pos;
    for (;;) {
      if (pos >= text.length) throw fail('unterminated string');
      const c = text.charCodeAt(pos);
      if (c === 0x22) {
        out += text.slice(start, pos++);
        return out;
      }
      if (c < 0x20) throw fail('invalid control character');
      if (c !== 0x5c) {
        pos++;
        continue;
      }
      out += text.slice(start, pos);
      const esc = text[pos + 1];
      if (esc === 'u') {
        const hex = text.slice(pos + 2, pos + 6);
        if (!HEX4.test(hex)) throw fail('invalid \\uXXXX escape');
        out += String.fromCharCode(parseInt(hex, 16)); // escaped pairs join as in Python
        pos += 6;
      } else {
        const simple = esc !== undefined && hasOwn(UNESCAPES, esc) ? UNESCAPES[esc] : undefined;
        if (simple === undefined) throw fail('invalid escape');
        out += simple;
        pos += 2;
      }
      start = pos;
    }
  };
  /**
   * @param {number} depth
   * @returns {unknown}
   */
  const readValue = (depth) => {
    skipSpace();
    const c = text[pos];
    if (c === '"') return readString();
    if (c === '{' || c === '[') {
      if (depth >= JSON_MAX_NESTING) throw fail(`nested deeper than ${JSON_MAX_NESTING} levels`);
      pos++;
      skipSpace();
      const close = c === '{' ? '}' : ']';
      /** @type {{[key: string]: unknown}} */
      const obj = {};
      /** @type {unknown[]} */
      const arr = [];
      if (text[pos] === close) {
        pos++;
        return c === '{' ? obj : arr;
      }
      for (;;) {
        if (c === '{') {
          skipSpace();
          if (text[pos] !== '"') throw fail('expecting a property name in double quotes');
          const key = readString();
          skipSpace();
          if (text[pos++] !== ':') throw fail("expecting ':'");
          const item = readValue(depth + 1);
          if (key === '__proto__') {
            const property = { value: item, enumerable: true, writable: true, configurable: true };
            Object.defineProperty(obj, key, property); // an own key, not the prototype
          } else {
            obj[key] = item;
          }
        } else {
          arr.push(readValue(depth + 1));
        }
        skipSpace();
        const sep = text[pos++];
        if (sep === close) return c === '{' ? obj : arr;
        if (sep !== ',') throw fail(`expecting ',' or '${close}'`);
      }
    }
    for (const [word, value] of LITERALS) {
      if (text.startsWith(word, pos)) {
        pos += word.length;
        return typeof value === 'number' ? new PyFloat(value) : value;
      }
    }
    NUMBER.lastIndex = pos;
    const match = NUMBER.exec(text);
    if (match === null) throw fail('expecting a value');
    pos += match[0].length;
    if (match[1] !== undefined || match[2] !== undefined) return new PyFloat(Number(match[0]));
    const digits = match[0].length - (match[0][0] === '-' ? 1 : 0);
    if (digits > PY_INT_MAX_STR_DIGITS) throw fail(`an integer of ${digits} digits is over Python's limit`);
    const big = BigInt(match[0]);
    return big >= -MAX_SAFE_INT && big <= MAX_SAFE_INT ? Number(big) : big;
  };
  const value = readValue(0);
  skipSpace();
  if (pos !== text.length) throw fail('extra data');
  return value;
}

/**
 * Python's `_check_json`: refuse what is not canonical in both languages.
 * @param {unknown} value
 * @param {number} depth
 * @param {string} where
 */
function checkJson(value, depth, where) {
  if (depth > MAX_META_DEPTH) {
    throw new MetadataError(`metadata ${where} is nested deeper than ${MAX_META_DEPTH}`);
  }
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return;
  if (isInt(value)) {
    if (value > MAX_SAFE_INT || value < -MAX_SAFE_INT) {
      throw new MetadataError(`metadata ${where} is an integer outside ±(2**53 - 1), which JS cannot hold`);
    }
  } else if (Array.isArray(value)) {
    value.forEach((item, i) => checkJson(item, depth + 1, `${where}[${i}]`));
  } else if (isPlainObject(value)) {
    for (const [key, item] of Object.entries(value)) {
      // eslint-disable-next-line no-control-regex
      if (!/^[\u0000-\u007f]*$/.test(key)) {
        throw new MetadataError(`metadata ${where} has key ${show(key)}: keys are ASCII strings`);
      }
      checkJson(item, depth + 1, `${where}.${key}`);
    }
  } else {
    const kind = value instanceof PyFloat || typeof value === 'number' ? 'float' : typeof value;
    throw new MetadataError(
      `metadata ${where} is a ${kind}: only str, int, bool, None, list, dict ` +
        '(floats print differently in Python and JS, so they cannot be canonical)',
    );
  }
}

// --- tensors ----------------------------------------------------------------------------------------

/**
 * Validate a dtype and shape and return the element count (exact), refusing before any big product.
 * @param {unknown} dtype
 * @param {readonly unknown[]} shape
 * @returns {bigint}
 */
function numelOf(dtype, shape) {
  if (typeof dtype !== 'string' || !hasOwn(DTYPE_SIZES, dtype)) {
    throw new TensorError(`dtype ${show(dtype)} is not one of ${Object.keys(DTYPE_SIZES).join(', ')}`);
  }
  if (shape.length > MAX_RANK) {
    throw new LimitExceededError(`tensor rank ${shape.length} is over the limit of ${MAX_RANK}`);
  }
  let numel = 1n;
  for (const dim of shape) {
    if (!isInt(dim) || dim < 0 || dim > MAX_DIM) {
      throw new TensorError(`shape ${show(shape)} has dim ${show(dim)}: dims are integers in 0..${MAX_DIM}`);
    }
    numel *= BigInt(dim);
  }
  return numel;
}

/**
 * @param {unknown} name
 * @returns {asserts name is string}
 */
function checkTensorName(name) {
  if (typeof name !== 'string' || name === '') {
    throw new MetadataError(`tensor name ${show(name)} must be a non-empty string`);
  }
  if (utf8ReplaceLength(name) > MAX_NAME_BYTES) {
    throw new MetadataError(`tensor name ${show(name.slice(0, 80))} is over ${MAX_NAME_BYTES} bytes`);
  }
}

/**
 * A validated tensor, as Python's `WireTensor(name, dtype, shape, data)`; `data` is viewed, not copied.
 * @param {unknown} name
 * @param {unknown} dtype
 * @param {unknown} shape  an array of integers
 * @param {unknown} data  bytes: an ArrayBuffer or any typed array over little-endian bytes
 * @returns {Readonly<WireTensor>}
 */
export function makeTensor(name, dtype, shape, data) {
  checkTensorName(name);
  if (!Array.isArray(shape)) {
    throw new TensorError(`tensor ${show(name)}: shape must be an array of ints, got ${show(shape)}`);
  }
  let bytes;
  try {
    bytes = asBytes(/** @type {ArrayBuffer | ArrayBufferView} */ (data), 'tensor data');
  } catch {
    throw new TensorError(`tensor ${show(name)}: data must be bytes, got ${typeof data}`);
  }
  const expected = numelOf(dtype, shape) * BigInt(DTYPE_SIZES[/** @type {DType} */ (dtype)]);
  if (BigInt(bytes.byteLength) !== expected) {
    throw new TensorError(
      `tensor ${show(name)} has ${bytes.byteLength} bytes but shape ${show(shape.map(Number))} ` +
        `of ${dtype} needs ${expected}`,
    );
  }
  return Object.freeze({
    name,
    dtype: /** @type {DType} */ (dtype),
    shape: Object.freeze(shape.map(Number)),
    data: bytes,
  });
}

/**
 * Python's `WireTensor.from_values`: pack flat numbers (bigint or integer numbers for int64).
 * float16 and float32 refuse finite values too large for the dtype, as Python's struct does.
 * @param {string} name
 * @param {DType} dtype
 * @param {readonly (number | bigint)[]} shape
 * @param {ArrayLike<number | bigint>} values
 */
export function tensorFromValues(name, dtype, shape, values) {
  numelOf(dtype, shape);
  const size = DTYPE_SIZES[dtype];
  const bytes = new Uint8Array(values.length * size);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < values.length; i++) {
    const value = values[i];
    const bad = (/** @type {string} */ why) =>
      new TensorError(`tensor ${show(name)}: values do not fit ${dtype}: ${why}`);
    if (dtype === 'int64') {
      if (!isInt(value)) throw bad(`${show(value)} is not an integer`);
      const big = BigInt(value);
      if (big < -(2n ** 63n) || big >= 2n ** 63n) throw bad(`${big} is out of range`);
      view.setBigInt64(i * 8, big, true);
    } else {
      if (typeof value !== 'number') throw bad(`${show(value)} is not a number`);
      if (dtype === 'float32') {
        if (Number.isFinite(value) && !Number.isFinite(Math.fround(value))) {
          throw bad(`${value} is too large for float32`);
        }
        view.setFloat32(i * 4, value, true);
      } else {
        try {
          view.setUint16(i * 2, numberToFloat16Bits(value), true);
        } catch (exc) {
          throw bad(/** @type {Error} */ (exc).message);
        }
      }
    }
  }
  return makeTensor(name, dtype, shape, bytes);
}

/**
 * @param {WireTensor} tensor
 * @param {DType} dtype
 */
function requireDtype(tensor, dtype) {
  if (tensor.dtype !== dtype) {
    throw new TypeError(`tensor ${show(tensor.name)} is ${tensor.dtype}, not ${dtype}`);
  }
}

/**
 * A Float32Array over a float32 tensor's data: a view when aligned, else a copy.
 * @param {WireTensor} tensor
 */
export function tensorAsFloat32(tensor) {
  requireDtype(tensor, 'float32');
  const { data } = tensor;
  if (LITTLE_ENDIAN && data.byteOffset % 4 === 0) {
    return new Float32Array(data.buffer, data.byteOffset, data.byteLength / 4);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return Float32Array.from({ length: data.byteLength / 4 }, (_, i) => view.getFloat32(i * 4, true));
}

/**
 * A Uint16Array of the float16 bit patterns of a float16 tensor: a view when aligned, else a copy.
 * @param {WireTensor} tensor
 */
export function tensorAsFloat16Bits(tensor) {
  requireDtype(tensor, 'float16');
  const { data } = tensor;
  if (LITTLE_ENDIAN && data.byteOffset % 2 === 0) {
    return new Uint16Array(data.buffer, data.byteOffset, data.byteLength / 2);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return Uint16Array.from({ length: data.byteLength / 2 }, (_, i) => view.getUint16(i * 2, true));
}

/**
 * A BigInt64Array over an int64 tensor's data: a view when aligned, else a copy.
 * @param {WireTensor} tensor
 */
export function tensorAsInt64(tensor) {
  requireDtype(tensor, 'int64');
  const { data } = tensor;
  if (LITTLE_ENDIAN && data.byteOffset % 8 === 0) {
    return new BigInt64Array(data.buffer, data.byteOffset, data.byteLength / 8);
  }
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  return BigInt64Array.from({ length: data.byteLength / 8 }, (_, i) => view.getBigInt64(i * 8, true));
}

/**
 * A float tensor as float32 values (float16 widened exactly), ready for onnxruntime-web.
 * @param {WireTensor} tensor
 */
export function tensorToFloat32(tensor) {
  if (tensor.dtype === 'float16') return float16ToFloat32Array(tensorAsFloat16Bits(tensor));
  return tensorAsFloat32(tensor);
}

/**
 * Python's `WireTensor.values()`: the elements as flat numbers, bigint for int64.
 * @param {WireTensor} tensor
 * @returns {number[] | bigint[]}
 */
export function tensorValues(tensor) {
  if (tensor.dtype === 'int64') return Array.from(tensorAsInt64(tensor));
  return Array.from(tensorToFloat32(tensor));
}

// --- float16 ----------------------------------------------------------------------------------------

const F64 = new Float64Array(1);
const F64_WORDS = new Uint32Array(F64.buffer);

/**
 * The float16 bits of `x`, rounded to nearest even exactly as Python's `struct.pack("<e", x)`
 * (PyFloat_Pack2): NaN becomes the quiet NaN 0x7e00 with x's sign, and a finite value too large for
 * float16 throws RangeError (Python: OverflowError).
 * @param {number} x
 */
export function numberToFloat16Bits(x) {
  F64[0] = x;
  const sign = F64_WORDS[LITTLE_ENDIAN ? 1 : 0] >>> 31;
  if (Number.isNaN(x)) return (sign << 15) | 0x7e00;
  if (!Number.isFinite(x)) return (sign << 15) | 0x7c00;
  if (x === 0) return sign << 15;
  const a = Math.abs(x);
  // frexp: a = f * 2**e with f in [1, 2); exact for every double that is not subnormal
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e -= 1;
  else if (2 ** (e + 1) <= a) e += 1;
  let f = a / 2 ** e;
  if (e >= 16) throw new RangeError('float too large to pack with e format');
  if (e < -25) {
    f = 0; // |x| < 2**-25: rounds to zero
    e = 0;
  } else if (e < -14) {
    f = f * 2 ** (14 + e); // gradual underflow
    e = 0;
  } else {
    e += 15;
    f -= 1;
  }
  f *= 1024;
  let bits = Math.trunc(f);
  const rest = f - bits;
  if (rest > 0.5 || (rest === 0.5 && bits % 2 === 1)) {
    bits += 1;
    if (bits === 1024) {
      bits = 0;
      e += 1;
      if (e === 31) throw new RangeError('float too large to pack with e format');
    }
  }
  return bits | (e << 10) | (sign << 15);
}

/**
 * The number a float16 bit pattern stands for (exact).
 * @param {number} bits
 */
export function float16BitsToNumber(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const frac = bits & 0x3ff;
  if (exp === 0x1f) return frac ? NaN : sign * Infinity;
  if (exp === 0) return sign * frac * 2 ** -24;
  return sign * (1024 + frac) * 2 ** (exp - 25);
}

/**
 * Widen float16 bit patterns to float32 (exact).
 * @param {ArrayLike<number>} bits
 */
export function float16ToFloat32Array(bits) {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = float16BitsToNumber(bits[i]);
  return out;
}

/**
 * Narrow numbers to float16 bit patterns, as `numberToFloat16Bits` (RangeError on overflow).
 * @param {ArrayLike<number>} values
 */
export function float32ToFloat16Array(values) {
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = numberToFloat16Bits(values[i]);
  return out;
}

/**
 * Throw NonFiniteError if a float tensor holds NaN or Inf (Python's `check_finite`).
 * @param {WireTensor} tensor
 */
export function checkFinite(tensor) {
  if (tensor.dtype === 'int64') return;
  let index = -1;
  let value = 0;
  if (tensor.dtype === 'float16') {
    const bits = tensorAsFloat16Bits(tensor);
    for (let i = 0; i < bits.length; i++) {
      if ((bits[i] & 0x7c00) === 0x7c00) {
        index = i;
        value = float16BitsToNumber(bits[i]);
        break;
      }
    }
  } else {
    const values = tensorAsFloat32(tensor);
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i])) {
        index = i;
        value = values[i];
        break;
      }
    }
  }
  if (index >= 0) {
    throw new NonFiniteError(
      `tensor ${show(tensor.name)} (${tensor.dtype}, shape [${tensor.shape.join(', ')}]) holds ` +
        `${pyFloatRepr(value, false)} at flat index ${index}`,
    );
  }
}

// --- frames -----------------------------------------------------------------------------------------

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
    throw new MetadataError(
      `metadata is not UTF-8 JSON: ${/** @type {Error} */ (exc).message}`, { cause: exc },
    );
  }
  const meta = parsePythonJson(text);
  if (!isPlainObject(meta)) {
    const kind =
      meta === null ? 'null' : Array.isArray(meta) ? 'list' : meta instanceof PyFloat ? 'float' : typeof meta;
    throw new MetadataError(`metadata is a JSON ${kind}, not an object`);
  }
  if (canonicalJson(meta) !== text) {
    throw new MetadataError('metadata is not canonical JSON (sorted keys, no spaces, UTF-8, no escapes)');
  }

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

// --- errors on the wire -----------------------------------------------------------------------------

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

// --- chunks -----------------------------------------------------------------------------------------

/**
 * Cut one message into data channel messages of at most `chunkSize` bytes each.
 * @param {number} messageId  u32, unique among the sender's messages in flight
 * @param {ArrayBuffer | ArrayBufferView} data
 * @param {number} [chunkSize]
 * @returns {Uint8Array[]}
 */
export function chunkMessage(messageId, data, chunkSize = DEFAULT_CHUNK_SIZE) {
  if (!Number.isInteger(messageId) || messageId < 0 || messageId > MAX_MESSAGE_ID) {
    throw new RangeError(`message id ${messageId} is not in 0..${MAX_MESSAGE_ID}`);
  }
  if (!Number.isInteger(chunkSize) || chunkSize <= CHUNK_HEADER_SIZE) {
    throw new RangeError(`chunk size ${chunkSize} leaves no room after the ${CHUNK_HEADER_SIZE}-byte header`);
  }
  const bytes = asBytes(data, 'a message');
  const payload = chunkSize - CHUNK_HEADER_SIZE;
  const count = Math.max(1, Math.ceil(bytes.byteLength / payload));
  if (count > MAX_CHUNKS) {
    throw new LimitExceededError(
      `message of ${bytes.byteLength} bytes needs ${count} chunks, over ${MAX_CHUNKS}`,
    );
  }
  return Array.from({ length: count }, (_, i) => {
    const part = bytes.subarray(i * payload, (i + 1) * payload);
    const chunk = new Uint8Array(CHUNK_HEADER_SIZE + part.byteLength);
    const view = new DataView(chunk.buffer);
    chunk.set(CHUNK_MAGIC_BYTES, 0);
    view.setUint32(4, messageId, true);
    view.setUint16(8, i, true);
    view.setUint16(10, count, true);
    chunk.set(part, CHUNK_HEADER_SIZE);
    return chunk;
  });
}

/**
 * @typedef {object} Partial
 * @property {number} started
 * @property {number} count
 * @property {Map<number, Uint8Array>} parts
 * @property {number} size
 */

/**
 * Joins chunks back into messages, within fixed bounds; time is passed in, so tests need no clock.
 * Any inconsistency drops that message's partial state and throws a WireError subclass; other
 * messages are untouched. A stuck message holds its room until `expire` drops it.
 */
export class Reassembler {
  /** @type {Map<number, Partial>} */
  #partial = new Map();
  #buffered = 0;

  /**
   * @param {object} [options]
   * @param {number} [options.maxMessageBytes]  the largest message, in bytes
   * @param {number} [options.maxPartial]  how many messages may be partial at once
   * @param {number} [options.maxBufferedBytes]  payload bytes held for all partial messages
   * @param {number} [options.timeoutS]  how long `expire` lets a partial message wait, in seconds
   */
  constructor(options = {}) {
    const { maxMessageBytes = MAX_FRAME_BYTES, maxPartial = 8 } = options;
    const { maxBufferedBytes = 2 * MAX_FRAME_BYTES, timeoutS = 30 } = options;
    this.maxMessageBytes = maxMessageBytes;
    this.maxPartial = maxPartial;
    this.maxBufferedBytes = maxBufferedBytes;
    this.timeoutS = timeoutS;
  }

  /** The number of partial messages held. */
  get size() {
    return this.#partial.size;
  }

  /** The payload bytes held for partial messages. */
  get bufferedBytes() {
    return this.#buffered;
  }

  /** @param {number} messageId */
  #drop(messageId) {
    const partial = this.#partial.get(messageId);
    if (partial !== undefined) {
      this.#partial.delete(messageId);
      this.#buffered -= partial.size;
    }
  }

  /**
   * @param {number} messageId
   * @param {WireError} error
   */
  #refuse(messageId, error) {
    this.#drop(messageId);
    return error;
  }

  /**
   * Take one chunk; return the whole message (a fresh buffer) when this chunk completes it, else null.
   * @param {ArrayBuffer | ArrayBufferView} chunk
   * @param {number} now  seconds, on any clock that `expire` is given too
   * @returns {Uint8Array | null}
   */
  feed(chunk, now) {
    const bytes = asBytes(chunk, 'a chunk');
    if (bytes.byteLength < CHUNK_HEADER_SIZE) {
      throw new ChunkError(
        `chunk of ${bytes.byteLength} bytes is shorter than the ${CHUNK_HEADER_SIZE}-byte header`,
      );
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const mid = view.getUint32(4, true);
    const index = view.getUint16(8, true);
    const count = view.getUint16(10, true);
    const payload = bytes.subarray(CHUNK_HEADER_SIZE);
    if (CHUNK_MAGIC_BYTES.some((b, i) => bytes[i] !== b)) {
      throw new ChunkError(`chunk starts with ${show(Array.from(bytes.subarray(0, 4)))}, not ${CHUNK_MAGIC}`);
    }
    if (count === 0 || index >= count) {
      throw this.#refuse(
        mid,
        new ChunkError(`message ${mid}: chunk index ${index} is outside 0..${count - 1}`),
      );
    }
    if (count > 1 && payload.byteLength === 0) {
      throw this.#refuse(mid, new ChunkError(`message ${mid}: chunk ${index} of ${count} is empty`));
    }
    let partial = this.#partial.get(mid);
    if (partial === undefined) {
      if (count === 1) {
        if (payload.byteLength > this.maxMessageBytes) {
          throw new LimitExceededError(
            `message ${mid} of ${payload.byteLength} bytes is over ${this.maxMessageBytes}`,
          );
        }
        return payload.slice();
      }
      if (this.#partial.size >= this.maxPartial) {
        throw new LimitExceededError(
          `${this.#partial.size} partial messages already; refusing message ${mid}`,
        );
      }
      partial = { started: now, count, parts: new Map(), size: 0 };
      this.#partial.set(mid, partial);
    } else if (count !== partial.count) {
      throw this.#refuse(
        mid,
        new ChunkError(`message ${mid}: chunk says ${count} chunks, earlier ${partial.count}`),
      );
    } else if (partial.parts.has(index)) {
      throw this.#refuse(mid, new ChunkError(`message ${mid}: chunk ${index} arrived twice`));
    }
    if (partial.size + payload.byteLength > this.maxMessageBytes) {
      throw this.#refuse(mid, new LimitExceededError(`message ${mid} is over ${this.maxMessageBytes} bytes`));
    }
    if (this.#buffered + payload.byteLength > this.maxBufferedBytes) {
      throw this.#refuse(
        mid,
        new LimitExceededError(`reassembly buffer is over ${this.maxBufferedBytes} bytes`),
      );
    }
    partial.parts.set(index, payload.slice());
    partial.size += payload.byteLength;
    this.#buffered += payload.byteLength;
    if (partial.parts.size < count) return null;
    this.#drop(mid);
    const message = new Uint8Array(partial.size);
    let at = 0;
    for (let i = 0; i < count; i++) {
      const part = /** @type {Uint8Array} */ (partial.parts.get(i));
      message.set(part, at);
      at += part.byteLength;
    }
    return message;
  }

  /**
   * Drop partial messages whose first chunk came more than `timeoutS` before `now`.
   * @param {number} now
   * @returns {number[]} the message ids dropped
   */
  expire(now) {
    const stale = [...this.#partial].filter(([, p]) => now - p.started > this.timeoutS).map(([mid]) => mid);
    for (const mid of stale) this.#drop(mid);
    return stale;
  }
}

// @ts-check
/**
 * Canonical JSON: the one text a value has, as Python's
 * `json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`
 * writes it. Frame metadata must be exactly this text, and signatures cover it (`identity/`).
 *
 * Reading uses `JSON.parse`; a text is canonical when writing the parsed value back gives the same
 * text. Numbers `JSON.parse` cannot hold exactly (a fraction, an exponent, an integer past 2**53) are
 * refused here, when metadata is read; Python refuses the same metadata too (floats and unsafe integers
 * are never valid), only later, so a frame that is also wrong elsewhere may be refused with another
 * error there. Both refuse it, which is all the wire needs.
 */

import { MAX_META_DEPTH, MAX_SAFE_INT } from './constants.js';
import { MetadataError } from './errors.js';
import { isInt, isPlainObject, show } from './values.js';

/**
 * How deep the writer follows nested values before refusing: Python's json module gives up near 1000
 * levels (RecursionError), the metadata check at MAX_META_DEPTH; between the two both codecs reach the
 * tensor checks before refusing the depth.
 */
export const JSON_MAX_NESTING = 900;

const HAS_LONE_SURROGATE = /[\uD800-\uDFFF]/u;
const ASCII = /^[\u0000-\u007f]*$/; // eslint-disable-line no-control-regex
const NEEDS_ESCAPE = /["\\\u0000-\u001f]/g; // eslint-disable-line no-control-regex

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

/** @param {string} ch */
function escapeChar(ch) {
  return SHORT_ESCAPES[ch] ?? `\\u${ch.charCodeAt(0).toString(16).padStart(4, '0')}`;
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
  return `"${text.replace(NEEDS_ESCAPE, escapeChar)}"`;
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
 * @param {unknown} value
 * @param {number} depth
 * @returns {string}
 */
function write(value, depth) {
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  if (typeof value === 'string') return quote(value);
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') {
    if (!Number.isInteger(value)) throw new MetadataError(`metadata holds the float ${value}`);
    return Object.is(value, -0) ? '0' : String(value);
  }
  if (depth >= JSON_MAX_NESTING) {
    throw new MetadataError(`metadata is nested deeper than ${JSON_MAX_NESTING} levels`);
  }
  if (Array.isArray(value)) return `[${value.map((item) => write(item, depth + 1)).join(',')}]`;
  if (isPlainObject(value)) {
    const keys = Object.keys(value).sort(byCodePoint);
    return `{${keys.map((k) => `${quote(k)}:${write(value[k], depth + 1)}`).join(',')}}`;
  }
  throw new MetadataError(`metadata cannot be written as canonical JSON: a ${typeof value}`);
}

/**
 * The canonical JSON text of `value`: integers (numbers or bigints), strings, booleans, null, arrays
 * and plain objects; anything else (a float, a lone surrogate) throws MetadataError.
 * @param {unknown} value
 * @returns {string}
 */
export function canonicalJson(value) {
  return write(value, 0);
}

/**
 * Read metadata text that must be canonical JSON of an object; throws MetadataError otherwise.
 * @param {string} text
 * @returns {{[key: string]: unknown}}
 */
export function parseCanonicalObject(text) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (exc) {
    throw new MetadataError(`metadata is not UTF-8 JSON: ${/** @type {Error} */ (exc).message}`, {
      cause: exc,
    });
  }
  if (!isPlainObject(value)) {
    const kind = value === null ? 'null' : Array.isArray(value) ? 'list' : typeof value;
    throw new MetadataError(`metadata is a JSON ${kind}, not an object`);
  }
  if (canonicalJson(value) !== text) {
    throw new MetadataError('metadata is not canonical JSON (sorted keys, no spaces, UTF-8, no escapes)');
  }
  return value;
}

/**
 * Python's `_check_json`: refuse what is not canonical in both languages (depth, unsafe integers,
 * non-ASCII keys, floats and other types).
 * @param {unknown} value
 * @param {number} depth
 * @param {string} where
 */
export function checkJson(value, depth, where) {
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
      if (!ASCII.test(key)) {
        throw new MetadataError(`metadata ${where} has key ${show(key)}: keys are ASCII strings`);
      }
      checkJson(item, depth + 1, `${where}.${key}`);
    }
  } else {
    const kind = typeof value === 'number' ? 'float' : typeof value;
    throw new MetadataError(
      `metadata ${where} is a ${kind}: only str, int, bool, None, list, dict ` +
        '(floats print differently in Python and JS, so they cannot be canonical)',
    );
  }
}

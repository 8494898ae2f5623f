// @ts-check
/**
 * Small predicates and renderers the codec's modules share: what counts as a plain object or an
 * integer, how bytes are viewed without copying, how a value is shown in an error message.
 */

/**
 * @param {unknown} value
 * @returns {value is {[key: string]: unknown}}
 */
export function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/**
 * @param {object} obj
 * @param {string} key
 */
export const hasOwn = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);

/**
 * An integer: a JS integer number, or a bigint (what `tensorFromValues` takes for int64).
 * @param {unknown} value
 * @returns {value is number | bigint}
 */
export const isInt = (value) =>
  typeof value === 'bigint' || (typeof value === 'number' && Number.isInteger(value));

/**
 * Bytes of `text` as Python's `text.encode("utf-8", "replace")` counts them (a lone surrogate is "?").
 * @param {string} text
 */
export function utf8ReplaceLength(text) {
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
export function show(value) {
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
 * @returns {Uint8Array}
 */
export function asBytes(data, what) {
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const shared = typeof SharedArrayBuffer !== 'undefined' && data instanceof SharedArrayBuffer;
  if (data instanceof ArrayBuffer || shared) {
    return new Uint8Array(data);
  }
  throw new TypeError(`${what} must be an ArrayBuffer or a typed array, got ${typeof data}`);
}

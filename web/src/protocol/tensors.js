// @ts-check
/**
 * Tensors on the wire (Python's `WireTensor`): validation of name, dtype and shape, packing numbers,
 * typed-array views onto a tensor's little-endian bytes, and the NaN/Inf check.
 */

import { DTYPE_SIZES, MAX_DIM, MAX_NAME_BYTES, MAX_RANK } from './constants.js';
import { LimitExceededError, MetadataError, NonFiniteError, TensorError } from './errors.js';
import { float16BitsToNumber, float16ToFloat32Array, float32ToFloat16Exact, numberToFloat16Bits } from './float16.js';
import { asBytes, hasOwn, isInt, show, utf8ReplaceLength } from './values.js';

/** @typedef {'float32' | 'float16' | 'int64' | 'uint8'} DType */

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
 * A tensor before validation; `data` may be any typed array over little-endian bytes.
 * @typedef {object} TensorInit
 * @property {string} name
 * @property {string} dtype
 * @property {readonly (number | bigint)[]} shape
 * @property {ArrayBufferView | ArrayBuffer} data
 */

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;

/**
 * Validate a dtype and shape and return the element count (exact), refusing before any big product.
 * @param {unknown} dtype
 * @param {readonly unknown[]} shape
 * @returns {bigint}
 */
export function numelOf(dtype, shape) {
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
export function checkTensorName(name) {
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
    } else if (dtype === 'uint8') {
      if (!isInt(value) || Number(value) < 0 || Number(value) > 255) throw bad(`${show(value)} is not a byte`);
      view.setUint8(i, Number(value));
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
 * Float32 values as a tensor to send: as float16 when every value is a float16 (lossless, half the
 * bytes; Python's `to_wire`, docs/wire.md "Tensor descriptors"), else as float32.
 * @param {string} name
 * @param {readonly number[]} shape
 * @param {Float32Array} values
 * @returns {{name: string, dtype: 'float32' | 'float16', shape: readonly number[], data: Float32Array | Uint16Array}}
 */
export function floatTensor(name, shape, values) {
  const narrow = values.length ? float32ToFloat16Exact(values) : null;
  if (narrow) return { name, dtype: 'float16', shape, data: narrow };
  return { name, dtype: 'float32', shape, data: values };
}

/**
 * Python's `WireTensor.values()`: the elements as flat numbers, bigint for int64.
 * @param {WireTensor} tensor
 * @returns {number[] | bigint[]}
 */
export function tensorValues(tensor) {
  if (tensor.dtype === 'int64') return Array.from(tensorAsInt64(tensor));
  if (tensor.dtype === 'uint8') return Array.from(tensor.data);
  return Array.from(tensorToFloat32(tensor));
}

/**
 * Throw NonFiniteError if a float tensor holds NaN or Inf (Python's `check_finite`).
 * @param {WireTensor} tensor
 */
export function checkFinite(tensor) {
  if (tensor.dtype === 'int64' || tensor.dtype === 'uint8') return;
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
        `${Number.isNaN(value) ? 'nan' : value > 0 ? 'inf' : '-inf'} at flat index ${index}`,
    );
  }
}

// @ts-check
/**
 * float16 <-> number conversions, exact and rounded as Python's `struct` packs format "e", so a
 * float16 tensor built from numbers has the same bytes in both codecs.
 */

const LITTLE_ENDIAN = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1;
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
 * The float16 bit patterns of `values` when every value is a float16 (Inf counts; NaN does not), else
 * null: Python's `to_wire` narrowing (python_peer/tensors.py), read from the float32 bits.
 * @param {Float32Array} values
 * @returns {Uint16Array | null}
 */
export function float32ToFloat16Exact(values) {
  const words = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < words.length; i++) {
    const word = words[i];
    const sign = (word >>> 16) & 0x8000;
    const exp = (word >>> 23) & 0xff;
    const mantissa = word & 0x7fffff;
    if (exp === 0 && mantissa === 0) {
      out[i] = sign; // zero, its sign kept
    } else if (exp === 0xff) {
      if (mantissa !== 0) return null; // NaN
      out[i] = sign | 0x7c00;
    } else if (exp >= 113 && exp <= 142) {
      if (mantissa & 0x1fff) return null; // more mantissa than float16's 10 bits
      out[i] = sign | ((exp - 112) << 10) | (mantissa >>> 13);
    } else if (exp >= 103 && exp < 113) {
      const full = mantissa | 0x800000; // a float16 subnormal: full * 2**(exp - 150) = m * 2**-24
      const shift = 126 - exp;
      if (full & ((1 << shift) - 1)) return null;
      out[i] = sign | (full >>> shift);
    } else {
      return null; // beyond float16's range, or below its smallest subnormal
    }
  }
  return out;
}

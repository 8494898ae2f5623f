// @ts-check

/**
 * float32 <-> float16 conversions of each value, as bytes.
 * @param {string} b64
 */
(b64) => {
  const bytes = T.fromB64(b64);
  const values = new Float64Array(bytes.buffer, 0, bytes.length / 8);
  const out = Array.from(values, (x) => { try { return T.wire.numberToFloat16Bits(x); } catch (e) { return e.name; } });
  out.push(T.wire.numberToFloat16Bits(NaN) & 0x7fff);
  return out;
};

// @ts-check

/**
 * Every float16 bit pattern as a number: 'nan', a finite number, or 'Infinity' / '-Infinity'.
 */
() => Array.from({ length: 65536 }, (_, bits) => {
  const x = T.wire.float16BitsToNumber(bits);
  return Number.isNaN(x) ? 'nan' : Number.isFinite(x) ? x : String(x);
});

// @ts-check

/**
 * The codec's constants and which of Python's error class names it exports.
 * @param {string[]} names
 */
(names) => {
  const w = T.wire;
  const classes = Object.fromEntries(names.filter((n) => typeof w[n] === 'function').map((n) => [
    n, { parent: Object.getPrototypeOf(w[n]).name, code: w[n].code ?? null }]));
  const consts = {};
  for (const [k, v] of Object.entries(w)) if (typeof v !== 'function' && !(v instanceof Uint8Array)) consts[k] = v;
  return { classes, consts, remote: Object.fromEntries(Object.entries(w.REMOTE_ERRORS).map(([c, k]) => [c, k.name])),
           noSession: T.hex(w.NO_SESSION) };
};

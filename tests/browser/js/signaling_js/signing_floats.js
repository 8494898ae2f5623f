// @ts-check

/**
 * Canonical bytes refuse what Python's canonical JSON refuses: a float, an unsafe integer, NaN.
 */
() => [1.5, 2 ** 53, NaN].map((x) => {
  try { S.canonicalBytes({x}); return 'accepted'; } catch (e) { return e.name; }
});

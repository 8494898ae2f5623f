// @ts-check

/**
 * `checkFinite` of each tensor: OK, or the name of the error.
 * @param {{ name: string, dtype: string, shape: number[], data: string }[]} specs
 */
(specs) => specs.map((t) => {
  try {
    T.wire.checkFinite(T.wire.makeTensor(t.name, t.dtype, t.shape, T.fromB64(t.data)));
    return 'OK';
  } catch (e) {
    return e instanceof T.wire.NonFiniteError ? e.message.split(' holds ')[1] : T.errorName(e);
  }
});

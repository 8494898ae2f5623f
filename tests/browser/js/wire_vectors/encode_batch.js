// @ts-check

/**
 * Encode each frame spec: its bytes in base64, or the name of the error.
 * @param {object[]} specs
 */
(specs) => specs.map((spec) => {
  try {
    const options = spec.max ? { maxFrameBytes: spec.max } : {};
    return 'OK:' + T.toB64(T.wire.encodeFrame(T.buildFrame(spec), options));
  } catch (e) {
    return T.errorName(e);
  }
});

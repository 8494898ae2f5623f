// @ts-check

/**
 * Error frames for each (code, message) and the typed error each raises on the caller.
 * @param {string} cases
 */
(cases) => JSON.parse(cases).map(([code, message], i) => {
  const bytes = T.wire.encodeFrame(T.wire.errorFrame(T.fromHex('000102030405060708090a0b0c0d0e0f'), i, code, message));
  let raised = null;
  try { T.wire.raiseForError(T.wire.decodeFrame(bytes)); } catch (e) { raised = [e.name, e.code, e.message, e instanceof T.wire.RemoteError]; }
  return [T.toB64(bytes), raised];
});

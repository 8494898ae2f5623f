// @ts-check

/**
 * Installed once per page: the codec as `T.wire`, plus base64/hex helpers and a frame description in
 * the shape of index.json.
 */
async () => {
  const wire = await import('/web/src/protocol/wire.js');
  const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const toB64 = (bytes) => {
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  };
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  const fromHex = (s) => Uint8Array.from(s.match(/../g) ?? [], (h) => parseInt(h, 16));
  const errorName = (e) => (e instanceof wire.WireError ? e.name : `not a WireError: ${e && e.name}: ${e && e.message}`);
  const describe = (f) => ({
    type: wire.frameTypeName(f.type),
    session: hex(f.session),
    step: f.step,
    flags: Object.entries(wire.FrameFlags).filter(([, bit]) => f.flags & bit).map(([name]) => name),
    meta: f.meta,
    tensors: f.tensors.map((t) => ({
      name: t.name, dtype: t.dtype, shape: [...t.shape], values: wire.tensorValues(t).map(Number),
    })),
  });
  const decodeOutcome = (b64, maxFrameBytes) => {
    try {
      const frame = wire.decodeFrame(fromB64(b64), maxFrameBytes ? { maxFrameBytes } : {});
      return toB64(wire.encodeFrame(frame)) === b64 ? 'OK' : 'OK but re-encodes differently';
    } catch (e) {
      return errorName(e);
    }
  };
  const buildFrame = (spec) => ({
    type: spec.type,
    session: fromHex(spec.session),
    step: spec.step,
    flags: spec.flags,
    meta: JSON.parse(spec.meta),
    tensors: spec.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: fromB64(t.data) })),
  });
  globalThis.T = { wire, fromB64, toB64, hex, fromHex, errorName, describe, decodeOutcome, buildFrame };
  return Object.keys(wire).length;
};

// @ts-check

/**
 * The golden frame file of `entry` decodes to the frame described and encodes back to its bytes.
 * @param {{ file: string, type: string, session: string, step: number, flags: string[], meta: object,
 *   tensors: { name: string, dtype: string, shape: number[], values: number[] }[] }} entry
 */
async (entry) => {
  const bytes = new Uint8Array(await (await fetch('/tests/vectors/' + entry.file)).arrayBuffer());
  const frame = T.wire.decodeFrame(bytes);
  const built = T.wire.encodeFrame({
    type: T.wire.FrameType[entry.type],
    session: T.fromHex(entry.session),
    step: entry.step,
    flags: entry.flags.reduce((bits, name) => bits | T.wire.FrameFlags[name], 0),
    meta: entry.meta,
    tensors: entry.tensors.map((t) => T.wire.tensorFromValues(t.name, t.dtype, t.shape, t.values)),
  });
  return { described: T.describe(frame), reencoded: T.toB64(T.wire.encodeFrame(frame)), built: T.toB64(built) };
};

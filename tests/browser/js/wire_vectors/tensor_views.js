// @ts-check

/**
 * Tensor views and helpers of the codec: values, byte order, sizes.
 */
async () => {
  const w = T.wire;
  const buffer = await (await fetch('/tests/vectors/forward_f16_pos.bin')).arrayBuffer();
  const aligned = w.decodeFrame(buffer);  // an ArrayBuffer, as a data channel delivers it
  const shifted = new Uint8Array(buffer.byteLength + 1);
  shifted.set(new Uint8Array(buffer), 1);
  const unaligned = w.decodeFrame(shifted.subarray(1));  // typed array views need copies
  const [h, pos] = aligned.tensors;
  const [h2, pos2] = unaligned.tensors;
  let missing = null;
  try { w.frameTensor(aligned, 'attention_mask'); } catch (e) { missing = e.name; }
  let overflow = null;
  try { w.float32ToFloat16Array([70000]); } catch (e) { overflow = e.name; }
  let wrongDtype = null;
  try { w.tensorAsFloat32(pos); } catch (e) { wrongDtype = e.name; }
  return {
    views: [w.tensorAsFloat16Bits(h).buffer === buffer, w.tensorAsInt64(pos).buffer === buffer],
    copies: [w.tensorAsFloat16Bits(h2).buffer === shifted.buffer, w.tensorAsInt64(pos2).buffer === shifted.buffer],
    widened: Array.from(w.tensorToFloat32(h2)),
    positions: Array.from(w.tensorAsInt64(pos2), Number),
    named: w.frameTensor(aligned, 'position_ids') === pos,
    missing, overflow, wrongDtype,
    roundTrip: Array.from(w.float16ToFloat32Array(w.float32ToFloat16Array([0.1, -2, 65504, 1e-8]))),
  };
};

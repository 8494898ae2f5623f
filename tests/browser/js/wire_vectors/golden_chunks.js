// @ts-check

/**
 * The golden chunk files of `entry`: cut and joined as Python does.
 * @param {{ message_file: string, files: string[], message_id: number, chunk_size: number }} entry
 */
async (entry) => {
  const load = async (name) => new Uint8Array(await (await fetch('/tests/vectors/' + name)).arrayBuffer());
  const message = await load(entry.message_file);
  const files = await Promise.all(entry.files.map(load));
  const cut = T.wire.chunkMessage(entry.message_id, message, entry.chunk_size).map(T.toB64);
  const orders = [files.map((_, i) => i), files.map((_, i) => files.length - 1 - i)];
  const joined = orders.map((order) => {
    const r = new T.wire.Reassembler();
    const outs = order.map((i) => r.feed(files[i], 0));
    return { pending: outs.slice(0, -1).every((o) => o === null), message: T.toB64(outs.at(-1)), left: r.size };
  });
  return { cut, files: files.map(T.toB64), joined, message: T.toB64(message) };
};

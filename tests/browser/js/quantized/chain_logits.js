// @ts-check

/**
 * Run a whole export in the page on WASM through the runtime's public runners (embed, every blocks
 * shard in turn, head) over one prompt's token ids; return the logits as base64 float32 bytes.
 * @param {{ base: string, ids: number[] }} args
 */
async ({ base, ids }) => {
  const clientShards = await import('/web/src/runtime/client_shards.js');
  const shard = await import('/web/src/runtime/shard.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const options = { runtime: { allowWebGPU: false, threads: 1 } };
  const positions = BigInt64Array.from(ids.map((_, i) => i), BigInt);
  const mask = new BigInt64Array(ids.length).fill(1n);
  const embed = await clientShards.EmbedRunner.load(base, manifest, options);
  let hidden = await embed.run(BigInt64Array.from(ids, BigInt), [1, ids.length], positions);
  await embed.release();
  for (const entry of manifest.shards.filter((s) => s.kind === 'blocks')) {
    const runner = await shard.BlocksRunner.load(base, entry, manifest, options);
    runner.open('s1', 1);
    hidden = await runner.forward('s1', hidden, mask, positions);
    runner.close('s1');
    await runner.release();
  }
  const head = await clientShards.HeadRunner.load(base, manifest, options);
  const logits = await head.run(hidden);
  await head.release();
  const bytes = new Uint8Array(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return { data: btoa(text), dims: logits.dims };
};

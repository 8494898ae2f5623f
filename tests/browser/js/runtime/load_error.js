// @ts-check

/**
 * Load a shard through the public API and report the error it throws.
 * @param {{ base: string, file: string, manifestBase?: string }} args
 */
async ({ base, file, manifestBase }) => {
  const shard = await import('/web/src/runtime/shard.js');
  const manifest = await (await fetch(manifestBase + 'manifest.json')).json();
  const entry = manifest.shards.find((s) => s.file === file);
  try {
    await shard.BlocksRunner.load(base, entry, manifest, { runtime: { allowWebGPU: false, threads: 1 } });
    return { ok: true };
  } catch (error) {
    return { ok: false, name: error.name, message: error.message, isShardError: error instanceof shard.ShardError };
  }
};

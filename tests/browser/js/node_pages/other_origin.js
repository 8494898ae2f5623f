// @ts-check

/**
 * From a page of another origin: the node's config, its modules and a shard, as embed.js would load them.
 * @param {string} origin
 */
async (origin) => {
  const config = await (await fetch(`${origin}/v1/config`)).json();
  const shard = await import(`${origin}/web/src/runtime/shard.js`);
  const base = config.models[0].base;
  const manifest = await (await fetch(new URL('manifest.json', base))).json();
  const entry = manifest.shards.find((s) => s.kind === 'head');
  const bytes = await shard.fetchShard(new URL(entry.file, base), entry.sha256, entry.bytes);
  const embed = await fetch(`${origin}/embed.js`);
  return { isolated: globalThis.crossOriginIsolated, node: config.node_id, size: bytes.byteLength,
           expected: entry.bytes, embed: embed.status };
};

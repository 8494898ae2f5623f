// @ts-check

/**
 * One bad call per case on an open session; each must throw ShardInputError (or SessionError).
 * The wrong types are deliberate.
 * @param {{ base: string, file: string }} args
 */
async ({ base, file }) => {
  const shard = await import('/web/src/runtime/shard.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const entry = manifest.shards.find((s) => s.file === file);
  const runner = await shard.BlocksRunner.load(base, entry, manifest, { runtime: { allowWebGPU: false, threads: 1 } });
  const hiddenSize = manifest.model.config.hidden_size;
  const ones = (n) => new BigInt64Array(n).fill(1n);
  const range = (n) => BigInt64Array.from({ length: n }, (_, i) => BigInt(i));
  const good = () => ({ data: new Float32Array(2 * hiddenSize).fill(0.5), dims: [1, 2, hiddenSize] });
  const cases = {
    wrong_hidden_size: () => runner.forward('s', { data: new Float32Array(2 * 32), dims: [1, 2, 32] }, ones(2), range(2)),
    wrong_batch: () => runner.forward('s', { data: new Float32Array(4 * hiddenSize), dims: [2, 2, hiddenSize] }, ones(4), range(4)),
    data_length: () => runner.forward('s', { data: new Float32Array(3), dims: [1, 2, hiddenSize] }, ones(2), range(2)),
    // @ts-expect-error a Float64Array where float32 data is expected, deliberately
    not_float32: () => runner.forward('s', { data: new Float64Array(2 * hiddenSize), dims: [1, 2, hiddenSize] }, ones(2), range(2)),
    mask_length: () => runner.forward('s', good(), ones(3), range(2)),
    // @ts-expect-error an Int32Array mask where int64 is expected, deliberately
    mask_type: () => runner.forward('s', good(), new Int32Array(2), range(2)),
    nan_hidden: () => { const h = good(); h.data[7] = NaN; return runner.forward('s', h, ones(2), range(2)); },
    inf_hidden: () => { const h = good(); h.data[0] = -Infinity; return runner.forward('s', h, ones(2), range(2)); },
    unknown_session: () => runner.forward('nope', good(), ones(2), range(2)),
  };
  runner.open('s', 1);
  const results = {};
  for (const [name, call] of Object.entries(cases)) {
    try {
      await call();
      results[name] = { ok: true };
    } catch (error) {
      results[name] = { ok: false, name: error.name, message: error.message };
    }
  }
  // the refusals left the session untouched: a good step still runs from an empty cache
  const out = await runner.forward('s', good(), ones(2), range(2));
  results.after = { ok: true, dims: out.dims, length: runner.session('s').length };
  await runner.release();
  return results;
};

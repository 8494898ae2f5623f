// @ts-check

/**
 * onnxruntime-web (WASM) runs a shard fetched from the node on `ids`.
 * @param {number[][]} ids
 */
async (ids) => {
  const config = JSON.parse(document.getElementById('ai4all-config').textContent);
  const { ShardRunner } = await import('/web/src/runtime/shard.js');
  const { makeTensor, runSession } = await import('/web/src/runtime/onnx.js');
  const base = config.models[0].base;
  const manifest = await (await fetch(new URL('manifest.json', base))).json();
  const entry = manifest.shards.find((s) => s.kind === 'embed');
  const runner = await ShardRunner.load(base, entry, { runtime: { allowWebGPU: false, threads: 2 } });
  const input = makeTensor(runner.runtime, 'int64', BigInt64Array.from(ids.flat().map(BigInt)),
    [ids.length, ids[0].length]);
  const out = await runSession(runner.session, { input_ids: input }, entry.file);
  const hidden = out.hidden_states_out;
  return { backend: runner.backend, threads: runner.runtime.threads, dims: hidden.dims,
           data: Array.from(hidden.data), name: manifest.model.name };
};

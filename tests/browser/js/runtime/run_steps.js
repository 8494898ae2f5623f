// @ts-check

/**
 * Run the prefill then the decode steps of one session in the page; return each step's output as
 * base64 float32 bytes and its time in milliseconds, then time `timedSteps` more decode steps.
 * @param {{ base: string, file: string, allowWebGPU: boolean, steps: object[], timedSteps: number }} args
 */
async ({ base, file, allowWebGPU, steps, timedSteps }) => {
  const shard = await import('/web/src/runtime/shard.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const entry = manifest.shards.find((s) => s.file === file);
  let progress = 0;
  const runner = await shard.BlocksRunner.load(base, entry, manifest, {
    onProgress: (received) => { progress = received; },
    runtime: { allowWebGPU, threads: 1 },
  });
  const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
  const toB64 = (a) => {
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
  runner.open('s1', 1);
  const outputs = [];
  for (const step of steps) {
    const hidden = { data: new Float32Array(fromB64(step.hidden)), dims: step.dims };
    const mask = BigInt64Array.from(step.mask, BigInt);
    const positions = BigInt64Array.from(step.positions, BigInt);
    const t0 = performance.now();
    const out = await runner.forward('s1', hidden, mask, positions);
    outputs.push({ data: toB64(out.data), dims: out.dims, ms: performance.now() - t0 });
  }
  const length = runner.session('s1').length;
  // steady-state decode timing: more steps of the last hidden state, not compared
  const last = steps[steps.length - 1];
  const times = [];
  for (let i = 0; i < timedSteps; i++) {
    const hidden = { data: new Float32Array(fromB64(last.hidden)), dims: last.dims };
    const t0 = performance.now();
    await runner.forward('s1', hidden, new BigInt64Array([1n]), new BigInt64Array([BigInt(length + i)]));
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const decodeMedianMs = times.length ? times[times.length >> 1] : null;
  runner.close('s1');
  await runner.release();
  return { backend: runner.runner.backend, progress, length, outputs, decodeMedianMs };
};

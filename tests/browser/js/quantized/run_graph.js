// @ts-check

/**
 * Load an ONNX file with onnxruntime-web (WASM, 1 thread) through the runtime module and run it on the
 * given feeds; return every output as base64 float32 bytes with its dims, or the error it threw.
 * @param {{ url: string, x: string, xDims: number[], ids: number[], idsDims: number[] }} args
 */
async ({ url, x, xDims, ids, idsDims }) => {
  const onnx = await import('/web/src/runtime/onnx.js');
  const runtime = await onnx.initRuntime({ allowWebGPU: false, threads: 1 });
  const toB64 = (a) => {
    const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(text);
  };
  try {
    const bytes = await (await fetch(url)).arrayBuffer();
    const session = await onnx.createSession(runtime, bytes, url);
    const xData = new Float32Array(Uint8Array.from(atob(x), (c) => c.charCodeAt(0)).buffer);
    const feeds = {
      x: onnx.makeTensor(runtime, 'float32', xData, xDims),
      ids: onnx.makeTensor(runtime, 'int64', BigInt64Array.from(ids, BigInt), idsDims),
    };
    const results = await onnx.runSession(session, feeds, url);
    const outputs = {};
    for (const [name, tensor] of Object.entries(results)) {
      outputs[name] = { data: toB64(await onnx.tensorData(tensor)), dims: [...tensor.dims] };
    }
    await onnx.releaseSession(session);
    return { ok: true, backend: runtime.backend, version: runtime.version, outputs };
  } catch (error) {
    return { ok: false, message: String(error && error.message ? error.message : error) };
  }
};

// @ts-check
// A shard's files in the browser (manifest format 2): the .onnx and at most one <file>.data, each
// fetched and sha256-verified before onnxruntime sees a byte; a manifest that names another file, a
// path out of the model's folder or a tampered weights file is refused with one clear error.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { afterEach, test } from 'node:test';

import { ShardError, fetchShardFiles, shardFiles, shardTotalBytes } from '../src/runtime/shard.js';
import { leastServedSpan } from '../src/node/span_choice.js';

const sha = (/** @type {Uint8Array} */ bytes) => createHash('sha256').update(bytes).digest('hex');
const ONNX = Uint8Array.from({ length: 300 }, (_, i) => i % 251);
const DATA = Uint8Array.from({ length: 5000 }, (_, i) => (i * 7) % 256);

function entry() {
  return {
    file: 'blocks_0-2.onnx',
    sha256: sha(ONNX),
    bytes: ONNX.byteLength,
    files: [
      { file: 'blocks_0-2.onnx', sha256: sha(ONNX), bytes: ONNX.byteLength },
      { file: 'blocks_0-2.onnx.data', sha256: sha(DATA), bytes: DATA.byteLength },
    ],
    kind: 'blocks',
    start: 0,
    end: 2,
    inputs: [],
    outputs: [],
  };
}

const realFetch = globalThis.fetch;
/** @type {string[]} */
let requested = [];

/** Serve `files` (name -> bytes) under http://models.test/m/, recording every requested path. */
function serve(/** @type {Record<string, Uint8Array>} */ files) {
  requested = [];
  globalThis.fetch = async (/** @type {any} */ url) => {
    const path = new URL(String(url)).pathname;
    requested.push(path);
    const name = path.slice('/m/'.length);
    const body = path.startsWith('/m/') ? files[name] : undefined;
    return body === undefined ? new Response('missing', { status: 404 }) : new Response(body.slice());
  };
}

afterEach(() => {
  globalThis.fetch = realFetch;
});

test('every listed file is fetched, verified and handed over as external data', async () => {
  serve({ 'blocks_0-2.onnx': ONNX, 'blocks_0-2.onnx.data': DATA });
  /** @type {number[]} */
  const progress = [];
  const got = await fetchShardFiles('http://models.test/m', entry(), { onProgress: (n, total) => progress.push(n, total) });
  assert.deepEqual(got.model, ONNX);
  assert.equal(got.externalData.length, 1);
  assert.equal(got.externalData[0].path, 'blocks_0-2.onnx.data');
  assert.deepEqual(got.externalData[0].data, DATA);
  assert.deepEqual(requested, ['/m/blocks_0-2.onnx', '/m/blocks_0-2.onnx.data']);
  assert.equal(progress.at(-2), ONNX.byteLength + DATA.byteLength);
  assert.equal(progress.at(-1), ONNX.byteLength + DATA.byteLength);
  assert.equal(shardTotalBytes(entry()), ONNX.byteLength + DATA.byteLength);
});

test('a tampered weights file is refused, naming it', async () => {
  const bad = DATA.slice();
  bad[2500] ^= 1;
  serve({ 'blocks_0-2.onnx': ONNX, 'blocks_0-2.onnx.data': bad });
  await assert.rejects(fetchShardFiles('http://models.test/m/', entry()), (error) => {
    assert.ok(error instanceof ShardError);
    assert.match(error.message, /blocks_0-2\.onnx\.data has sha256 [0-9a-f]{16}\.\.\., the manifest says [0-9a-f]{16}\.\.\.: the file was altered or corrupted/);
    return true;
  });
});

test('a weights file of another size is refused, and a missing one', async () => {
  serve({ 'blocks_0-2.onnx': ONNX, 'blocks_0-2.onnx.data': Uint8Array.of(...DATA, 0) });
  await assert.rejects(fetchShardFiles('http://models.test/m/', entry()), /blocks_0-2\.onnx\.data is larger than the 5000 bytes the manifest says/);
  serve({ 'blocks_0-2.onnx': ONNX, 'blocks_0-2.onnx.data': DATA.subarray(0, 4000) });
  await assert.rejects(fetchShardFiles('http://models.test/m/', entry()), /blocks_0-2\.onnx\.data is 4000 bytes, the manifest says 5000/);
  serve({ 'blocks_0-2.onnx': ONNX });
  await assert.rejects(fetchShardFiles('http://models.test/m/', entry()), /cannot download shard blocks_0-2\.onnx\.data: HTTP 404/);
});

test('a file the manifest does not allow is refused before any request', async () => {
  /** @type {[string, (e: any) => void, RegExp][]} */
  const cases = [
    ['escaping path', (e) => (e.files[1].file = '../secret.data'), /file name "\.\.\/secret\.data" must be a plain file name/],
    ['absolute path', (e) => (e.files[1].file = '/etc/passwd'), /must be a plain file name/],
    ['url', (e) => (e.files[1].file = 'http://evil.test/x.data'), /must be a plain file name/],
    ['another name', (e) => (e.files[1].file = 'other.onnx.data'), /file other\.onnx\.data is not allowed: a shard's only other file is blocks_0-2\.onnx\.data/],
    ['twice', (e) => e.files.push({ ...e.files[1] }), /blocks_0-2\.onnx\.data is listed 2 times/],
    ['bad sha256', (e) => (e.files[1].sha256 = 'ab'), /file blocks_0-2\.onnx\.data: sha256 "ab" is not 64 lowercase hex digits/],
    ['zero bytes', (e) => (e.files[1].bytes = 0), /bytes must be a positive integer/],
    ['not first', (e) => e.files.reverse(), /the first of 'files' must be the shard's \.onnx/],
    ['first differs', (e) => (e.files[0].bytes = 1), /the first of 'files' must be the shard's \.onnx/],
    ['empty', (e) => (e.files = []), /'files' must list every file the shard needs/],
    ['not a list', (e) => (e.files = 'blocks_0-2.onnx.data'), /'files' must list every file the shard needs/],
  ];
  for (const [name, mutate, pattern] of cases) {
    serve({ 'blocks_0-2.onnx': ONNX, 'blocks_0-2.onnx.data': DATA });
    const bad = entry();
    mutate(bad);
    await assert.rejects(fetchShardFiles('http://models.test/m/', bad), (error) => {
      assert.ok(error instanceof ShardError, name);
      assert.match(error.message, pattern, name);
      assert.match(error.message, /^shard (blocks_0-2\.onnx|file name)/, name);
      return true;
    });
    assert.deepEqual(requested, [], name);
  }
});

test('a format-1 entry (no files) is its .onnx alone', async () => {
  const { files: _files, ...v1 } = entry();
  assert.deepEqual(shardFiles(v1), [{ file: v1.file, sha256: v1.sha256, bytes: v1.bytes }]);
  serve({ 'blocks_0-2.onnx': ONNX });
  const got = await fetchShardFiles('http://models.test/m/', v1);
  assert.deepEqual(got.model, ONNX);
  assert.deepEqual(got.externalData, []);
});

test('a fetchFile (the cache) is asked for every listed file, and its answer checked', async () => {
  /** @type {string[]} */
  const asked = [];
  const fetchFile = async (/** @type {URL} */ url, /** @type {{file: string}} */ listed) => {
    asked.push(`${url.pathname} ${listed.file}`);
    return listed.file.endsWith('.data') ? DATA.subarray(0, 10) : ONNX;
  };
  await assert.rejects(fetchShardFiles('http://models.test/m/', entry(), { fetchFile }), /file blocks_0-2\.onnx\.data is 10 bytes, the manifest says 5000/);
  assert.deepEqual(asked, ['/m/blocks_0-2.onnx blocks_0-2.onnx', '/m/blocks_0-2.onnx.data blocks_0-2.onnx.data']);
});

test('a node picks a span by the size of all its files', () => {
  const small = { ...entry(), file: 'blocks_2-4.onnx', start: 2, end: 4, files: undefined };
  const config = { num_layers: 4, num_key_value_heads: 1, head_dim: 8, max_position_embeddings: 2048 };
  const manifest = { model: { name: 'm', config }, shards: [entry(), small] };
  const kv = 2 * (2 * 8 * 4) * 8 * 2048; // two blocks' KV room: 8 sessions of 2048 tokens
  // blocks_0-2 is least served (nobody) but its .onnx.data makes it 5300 bytes: over a budget of its KV + 1000
  assert.deepEqual(leastServedSpan(manifest, [], kv + 1000), { start: 2, end: 4 });
  assert.deepEqual(leastServedSpan(manifest, [], kv + 6000), { start: 0, end: 2 });
});

// @ts-check
/**
 * The browser verifies a model's signed manifest before it uses the model (web/src/runtime/publication.js),
 * on the golden vectors of tests/vectors/registry/ (written by tests/vectors/generate_registry.py and
 * verified by Python in tests/fast/test_registry_vectors.py). A node serving an altered manifest, an
 * altered shard or tokenizer, a manifest re-signed by a stranger or by an untrusted publisher is refused
 * with a clear error, over the same HTTP a signaling node's `--model-dir` answers.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { afterEach, test } from 'node:test';

import { Identity, signingBytes } from '../src/identity/identity.js';
import { fetchShard } from '../src/runtime/download.js';
import {
  PublicationError,
  UntrustedPublisherError,
  checkChunk,
  checkPublishedFile,
  fetchVerifiedManifest,
  parsePublication,
  trustPolicy,
  verifyPublication,
  verifyRecord,
} from '../src/runtime/publication.js';

const DIR = new URL('../../tests/vectors/registry/', import.meta.url);
const read = async (/** @type {string} */ name) => new Uint8Array(await readFile(new URL(name, DIR)));
const { publisher } = JSON.parse(new TextDecoder().decode(await read('publisher.json')));
const TRUSTED = { trusted: [publisher], allowUnsigned: false };
const signedJson = async () => JSON.parse(new TextDecoder().decode(await read('manifest.sig.json')));

/** A node serving the vector directory over HTTP, with `changes` to what it serves (null: 404). */
const realFetch = globalThis.fetch;
/** @param {Record<string, Uint8Array | null>} [changes] */
async function serve(changes = {}) {
  /** @type {Record<string, Uint8Array | null>} */
  const files = {};
  for (const name of ['manifest.json', 'manifest.sig.json', 'blocks_0-2.onnx', 'tokenizer.json', 'chat_template.jinja']) {
    files[name] = await read(name);
  }
  Object.assign(files, changes);
  globalThis.fetch = async (/** @type {any} */ url) => {
    const name = decodeURIComponent(new URL(String(url)).pathname.split('/').pop() ?? '');
    const body = files[name];
    if (body === undefined || body === null) return new Response('not found', { status: 404 });
    return new Response(/** @type {Uint8Array<ArrayBuffer>} */ (body), { status: 200 });
  };
}
afterEach(() => {
  globalThis.fetch = realFetch;
});

const BASE = 'http://node.test/models/vectors%2Ftiny-model/';

test('the golden signed manifest verifies, and its files and chunks check out', async () => {
  await serve();
  const { manifest, publication } = await fetchVerifiedManifest(BASE, TRUSTED);
  assert.ok(publication);
  assert.equal(manifest.model.name, 'vectors/tiny-model');
  assert.equal(publication.publisher, publisher);
  assert.equal(publication.version, 7);
  const shard = manifest.shards[0];
  const bytes = await fetchShard(new URL(shard.file, BASE), shard.sha256, shard.bytes);
  await checkChunk(publication.files[0], 0, bytes);
  await checkPublishedFile(publication, 'tokenizer.json', await read('tokenizer.json'));
});

test('a node serving an altered manifest.json is refused', async () => {
  const text = new TextDecoder().decode(await read('manifest.json'));
  const altered = new TextEncoder().encode(text.replace('0.125', '0.126')); // same size, another float
  await serve({ 'manifest.json': altered });
  await assert.rejects(fetchVerifiedManifest(BASE, TRUSTED), /manifest\.json is not the manifest publisher .* signed: it was altered/);
});

test('a node serving an altered shard is refused before the shard is used', async () => {
  const shard = await read('blocks_0-2.onnx');
  shard[10] ^= 0xff;
  await serve({ 'blocks_0-2.onnx': shard });
  const { manifest, publication } = await fetchVerifiedManifest(BASE, TRUSTED); // the manifest is genuine
  const entry = manifest.shards[0];
  await assert.rejects(fetchShard(new URL(entry.file, BASE), entry.sha256, entry.bytes), /the file was altered or corrupted/);
  assert.ok(publication);
  await assert.rejects(checkChunk(publication.files[0], 0, shard), /chunk 0: its sha256 is not the one the publisher signed/);
  await assert.rejects(checkChunk(publication.files[0], 0, shard.slice(1)), /chunk 0: 2999 bytes, the publisher says 3000/);
});

test('a node serving an altered tokenizer is refused', async () => {
  const { publication } = await (async () => {
    await serve();
    return fetchVerifiedManifest(BASE, TRUSTED);
  })();
  const tokenizer = await read('tokenizer.json');
  tokenizer[3] ^= 1;
  await assert.rejects(checkPublishedFile(publication, 'tokenizer.json', tokenizer), /tokenizer\.json is not the file publisher .* signed/);
});

test('a shard hash changed in the signed body breaks the signature', async () => {
  const signed = await signedJson();
  signed.body.files[0].sha256 = '0'.repeat(64);
  await assert.rejects(verifyPublication(signed, await read('manifest.json'), TRUSTED), /does not carry a valid signature of publisher/);
});

test('a manifest re-signed by a stranger is refused: bad signature under the publisher, untrusted as itself', async () => {
  const stranger = await Identity.generate();
  const signed = await signedJson();
  const resigned = { body: signed.body, sig: await stranger.sign(signingBytes('ai4all/manifest/v1', signed.body)) };
  await assert.rejects(verifyPublication(resigned, await read('manifest.json'), TRUSTED), /valid signature/);
  const own = { ...signed.body, publisher: stranger.peerId };
  const asItself = { body: own, sig: await stranger.sign(signingBytes('ai4all/manifest/v1', own)) };
  await assert.rejects(verifyPublication(asItself, await read('manifest.json'), TRUSTED), (error) => {
    assert.ok(error instanceof UntrustedPublisherError);
    assert.equal(error.publisher, stranger.peerId);
    assert.match(error.message, /which this page's node does not trust/);
    return true;
  });
});

test("an untrusted publisher's genuine manifest is refused, never used silently", async () => {
  await serve();
  await assert.rejects(fetchVerifiedManifest(BASE, { trusted: [], allowUnsigned: true }), UntrustedPublisherError);
});

test('no signed manifest: refused unless the page allows unsigned exports', async () => {
  await serve({ 'manifest.sig.json': null });
  await assert.rejects(fetchVerifiedManifest(BASE, TRUSTED), /has no signed manifest \(manifest\.sig\.json\): not used/);
  const { manifest, publication } = await fetchVerifiedManifest(BASE, { trusted: [], allowUnsigned: true });
  assert.equal(publication, null);
  await assert.rejects(fetchVerifiedManifest(BASE, TRUSTED, false), /has no signed manifest/);
  const said = await fetchVerifiedManifest(BASE, { trusted: [], allowUnsigned: true }, false);
  assert.equal(said.publication, null);
  assert.equal(manifest.model.name, 'vectors/tiny-model');
});

test('a garbled or out-of-schema signed manifest is refused by name', async () => {
  await serve({ 'manifest.sig.json': new TextEncoder().encode('{not json') });
  await assert.rejects(fetchVerifiedManifest(BASE, { trusted: [publisher], allowUnsigned: true }), /manifest\.sig\.json is not JSON/);
  const cases = [
    [(/** @type {any} */ s) => (s.body.v = 2), /v \(the signed manifest version\)/],
    [(/** @type {any} */ s) => (s.body.chunk_bytes = 4096), /chunk_bytes/],
    [(/** @type {any} */ s) => (s.body.extra = 1), /fields/],
    [(/** @type {any} */ s) => (s.body.files[0].file = '../etc/passwd'), /not a plain file name/],
    [(/** @type {any} */ s) => s.body.files[0].chunks.push('0'.repeat(64)), /chunk hashes expected/],
    [(/** @type {any} */ s) => s.body.files.reverse(), /sorted by name/],
  ];
  for (const [change, message] of cases) {
    const signed = await signedJson();
    /** @type {any} */ (change)(signed);
    assert.throws(() => parsePublication(signed), /** @type {RegExp} */ (message));
    assert.throws(() => parsePublication(signed), PublicationError);
  }
});

test("the page's trust comes from /v1/config's publishers", () => {
  assert.deepEqual(trustPolicy({ publishers: { trusted: [publisher, 'nope'], allow_unsigned: true } }), {
    trusted: [publisher],
    allowUnsigned: true,
  });
  assert.deepEqual(trustPolicy({}), { trusted: [], allowUnsigned: false });
});

test('the golden record pins the golden signed manifest; forged, altered and oversized records are refused', async () => {
  const record = JSON.parse(new TextDecoder().decode(await read('manifest.record.json')));
  await serve();
  const { publication } = await fetchVerifiedManifest(BASE, TRUSTED);
  const body = await verifyRecord(record, publication);
  assert.equal(body.version, 7);
  assert.equal(body.total_bytes, 3747);
  const stranger = await Identity.generate();
  const forged = { body: record.body, sig: await stranger.sign(signingBytes('ai4all/record/v1', record.body)) };
  await assert.rejects(verifyRecord(forged), /valid signature/);
  const altered = { body: { ...record.body, version: 8 }, sig: record.sig };
  await assert.rejects(verifyRecord(altered), /valid signature/);
  const other = { ...record.body, signed_sha256: '0'.repeat(64) };
  const repinned = { body: other, sig: '0'.repeat(128) };
  await assert.rejects(verifyRecord({ body: { ...record.body, model: 'm'.repeat(2000) }, sig: record.sig }), /over 1024/);
  await assert.rejects(verifyRecord(repinned, publication), /valid signature/);
});

// @ts-check
/**
 * The browser's chunk fetcher and seeder (web/src/runtime/chunk_fetch.js, web/src/node/seeder.js,
 * docs/chunks.md) over fake links: every request and answer is encoded and decoded by the wire codec,
 * and the lying sources below lie in the documented protocol only (they rewrite answer frames). A bad
 * chunk bans its source and the chunk is fetched from another; when every source lies the fetch fails
 * with a clear error and nothing is stored. The seeder answers with the refusals and bounds of
 * python_peer/seeding.py; its manifest answer is the golden signed manifest of tests/vectors/registry/.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { CHUNK_BYTES, MAX_CHUNK_REQUESTS_IN_FLIGHT, ChunkErrorCode, ErrorCode, FrameType } from '../src/protocol/constants.js';
import { decodeFrame, encodeFrame, errorFrame, makeFrame } from '../src/protocol/wire.js';
import { chunkRequest, haveRequest, manifestRequest } from '../src/runtime/chunk_frames.js';
import { ChunkFetchError, ChunkFetcher, LinkSource, fetchSeededManifest } from '../src/runtime/chunk_fetch.js';
import { parsePublication } from '../src/runtime/publication.js';
import { BrowserSeeder } from '../src/node/seeder.js';

const quiet = { info: () => {}, warn: () => {} };
const sha = (/** @type {Uint8Array} */ b) => createHash('sha256').update(b).digest('hex');
const PUBLISHER = 'ab'.repeat(32);
const MODEL = 'test/model';

/** @param {number} n @param {number} seed */
function bytesOf(n, seed) {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = (i * 31 + seed * 7 + (i >> 10)) & 0xff;
  return out;
}

/** @param {string} file @param {Uint8Array} data */
function published(file, data) {
  const chunks = [];
  for (let i = 0; i < Math.max(1, Math.ceil(data.byteLength / CHUNK_BYTES)); i++) chunks.push(sha(data.subarray(i * CHUNK_BYTES, (i + 1) * CHUNK_BYTES)));
  return { file, bytes: data.byteLength, sha256: sha(data), chunks };
}

const DATA = { 'a.onnx': bytesOf(2.5 * CHUNK_BYTES, 1), 'a.onnx.data': bytesOf(CHUNK_BYTES + 17, 2), 'b.onnx': bytesOf(5000, 3) };
const FILES = Object.entries(DATA).map(([name, data]) => published(name, data)).sort((a, b) => (a.file < b.file ? -1 : 1));
/** @type {import('../src/runtime/publication.js').Publication} */
const PUBLICATION = { publisher: PUBLISHER, model: MODEL, version: 3, issuedMs: 0, manifestBytes: 1, manifestSha256: '0'.repeat(64), files: FILES, body: {}, sig: '' };

/**
 * A seeder holding `files` of `publication`, as a peer across a link (frames encoded and decoded both ways).
 * @param {string} id
 * @param {{files?: string[], publication?: any, data?: Record<string, Uint8Array>, seeder?: BrowserSeeder,
 *   rewrite?: (answer: import('../src/protocol/wire.js').Frame, request: import('../src/protocol/wire.js').Frame) => any}} [options]
 */
function peer(id, { files = Object.keys(DATA), publication = PUBLICATION, data = DATA, seeder = new BrowserSeeder({ log: quiet }), rewrite } = {}) {
  seeder.add({
    publication,
    signed: new Uint8Array(1),
    manifest: new Uint8Array(1),
    files: new Set(files),
    read: async (file, offset, length) => data[file].slice(offset, offset + length),
  });
  const calls = { chunks: 0 };
  return {
    id,
    calls,
    seeder,
    /** @param {import('../src/protocol/wire.js').Frame} frame */
    async call(frame) {
      const request = decodeFrame(encodeFrame(frame));
      if (request.meta.kind === 'chunk') calls.chunks++;
      let answer = await seeder.handle('requester', request);
      if (rewrite !== undefined && request.meta.kind === 'chunk' && answer.type === FrameType.CHUNK) answer = makeFrame(rewrite(answer, request));
      return decodeFrame(encodeFrame(answer));
    },
  };
}

/** An answer frame's fields, to rewrite. @param {import('../src/protocol/wire.js').Frame} f */
const fields = (f) => ({ type: f.type, session: f.session, step: f.step, meta: { ...f.meta }, tensors: f.tensors.map((t) => ({ ...t })) });

const LIES = {
  /** @param {any} f */
  corrupted: (f) => {
    const out = fields(f);
    const data = out.tensors[0].data.slice();
    data[0] ^= 0xff;
    out.tensors[0] = { ...out.tensors[0], data };
    return out;
  },
  /** @param {any} f */
  truncated: (f) => {
    const out = fields(f);
    const data = out.tensors[0].data.slice(0, out.tensors[0].data.byteLength - 1);
    out.tensors[0] = { ...out.tensors[0], data, shape: [data.byteLength] };
    return out;
  },
  /** @param {any} f */
  mislabelled: (f) => ({ ...fields(f), meta: { ...f.meta, index: f.meta.index + 1 } }),
  /** another file's bytes, labelled as the one asked for @param {any} f */
  otherFile: (f) => {
    const out = fields(f);
    const data = DATA['b.onnx'];
    out.tensors[0] = { ...out.tensors[0], data, shape: [data.byteLength] };
    return out;
  },
  /** @param {any} f */
  malformed: (f) => ({ ...fields(f), meta: { ...f.meta, extra: 1 } }),
};

function store() {
  /** @type {Map<string, Uint8Array>} */
  const stored = new Map();
  return { stored, put: async (/** @type {any} */ file, /** @type {Uint8Array} */ bytes) => void stored.set(file.file, bytes.slice()) };
}

test('files come from several seeders at once, every chunk checked, each file stored once whole', async () => {
  const sources = [peer('1'.repeat(64)), peer('2'.repeat(64))];
  const { stored, put } = store();
  const fetcher = new ChunkFetcher({ log: quiet });
  const got = await fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources, store: put });
  for (const [name, data] of Object.entries(DATA)) {
    assert.deepEqual(got.get(name), data, name);
    assert.deepEqual(stored.get(name), data, name);
  }
  assert.ok(sources.every((s) => s.calls.chunks > 0), 'both seeders were used');
  assert.equal(fetcher.stats.chunks, FILES.reduce((n, f) => n + f.chunks.length, 0));
});

for (const [lie, rewrite] of Object.entries(LIES)) {
  test(`a source that sends a ${lie} chunk is banned and the chunk is fetched from another`, async () => {
    const liar = peer('6'.repeat(64), { rewrite });
    const honest = peer('7'.repeat(64));
    const { stored, put } = store();
    const fetcher = new ChunkFetcher({ log: quiet });
    const got = await fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources: [liar, honest], store: put });
    assert.deepEqual(got.get('a.onnx'), DATA['a.onnx']);
    assert.deepEqual(stored.get('a.onnx.data'), DATA['a.onnx.data']);
    assert.ok(fetcher.banned(liar.id), 'the liar is banned');
    assert.ok(!fetcher.banned(honest.id));
    // banned at its first bad chunk: only the requests already in flight then were sent to it
    assert.ok(liar.calls.chunks <= MAX_CHUNK_REQUESTS_IN_FLIGHT, `${liar.calls.chunks} requests to the liar`);
  });
}

test('when every source lies, the fetch fails saying which chunk and why, and nothing is stored', async () => {
  const sources = [peer('8'.repeat(64), { rewrite: LIES.corrupted }), peer('9'.repeat(64), { rewrite: LIES.truncated })];
  const { stored, put } = store();
  const fetcher = new ChunkFetcher({ log: quiet });
  await assert.rejects(
    fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources, store: put }),
    (err) => err instanceof ChunkFetchError && /no usable peer holds chunk \d+ of /.test(err.message) && /banned: it sent a bad chunk/.test(err.message),
  );
  assert.equal(stored.size, 0);
  // the bans outlive the fetch: the same liars are not asked again
  const again = await fetcher.holdings(sources, PUBLICATION);
  assert.equal(again.length, 0);
});

test('a source of another version is not used; a file no source seeds fails clearly', async () => {
  const other = peer('3'.repeat(64), { publication: { ...PUBLICATION, version: 2 } });
  const partial = peer('4'.repeat(64), { files: ['b.onnx'] });
  const { stored, put } = store();
  const fetcher = new ChunkFetcher({ log: quiet });
  await assert.rejects(
    fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources: [other, partial], store: put }),
    /no usable peer holds chunk 0 of a\.onnx/,
  );
  assert.equal(other.calls.chunks, 0);
  assert.ok(!stored.has('a.onnx'));
});

test('busy and rate-limited answers are retried later, not taken for lies', async () => {
  const strict = new BrowserSeeder({ log: quiet, inFlightPerRequester: 1, requestsPerS: 4 });
  const source = peer('5'.repeat(64), { seeder: strict });
  const fetcher = new ChunkFetcher({ log: quiet });
  const got = await fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources: [source] });
  assert.deepEqual(got.get('a.onnx'), DATA['a.onnx']);
  assert.equal(fetcher.bans.size, 0);
});

test('the seeder refuses with the documented codes', async () => {
  const seeder = new BrowserSeeder({ log: quiet });
  const rotten = { ...DATA, 'b.onnx': bytesOf(5000, 9) };
  const { call } = peer('a'.repeat(64), { seeder, files: ['a.onnx', 'b.onnx'], data: rotten });
  const code = async (/** @type {any} */ frame) => String((await call(frame)).meta.code);
  assert.equal(await code(chunkRequest(MODEL, PUBLISHER, 2, 'a.onnx', 0)), ChunkErrorCode.NOT_SEEDED, 'another version');
  assert.equal(await code(chunkRequest(MODEL, 'cd'.repeat(32), 3, 'a.onnx', 0)), ChunkErrorCode.NOT_SEEDED, 'another publisher');
  assert.equal(await code(chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx.data', 0)), ChunkErrorCode.NOT_SEEDED, 'a file not held');
  assert.equal(await code(chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx', 3)), ChunkErrorCode.NOT_SEEDED, 'past the last chunk');
  assert.equal(await code(chunkRequest('other', PUBLISHER, 3, 'a.onnx', 0)), ChunkErrorCode.NOT_SEEDED, 'another model');
  assert.equal(await code(haveRequest('other')), ChunkErrorCode.NOT_SEEDED);
  // a copy that rotted is refused and no longer offered, never sent
  assert.equal(await code(chunkRequest(MODEL, PUBLISHER, 3, 'b.onnx', 0)), ChunkErrorCode.NOT_SEEDED, 'rotted');
  const have = await call(haveRequest(MODEL));
  assert.deepEqual(have.meta.files, ['a.onnx']);
  const session = new Uint8Array(16).fill(1);
  const bad = [
    { kind: 'chunk', model: MODEL, publisher: PUBLISHER, version: 3, file: '../etc/passwd', index: 0 },
    { kind: 'chunk', model: MODEL, publisher: PUBLISHER, version: 3, file: 'a.onnx', index: -1 },
    { kind: 'chunk', model: MODEL, publisher: PUBLISHER, version: '3', file: 'a.onnx', index: 0 },
    { kind: 'chunk', model: MODEL, publisher: 'AB'.repeat(32), version: 3, file: 'a.onnx', index: 0 },
    { kind: 'have', model: MODEL, extra: true },
    { kind: 'steal', model: MODEL },
    { kind: 'manifest', model: '' },
  ];
  for (const meta of bad) {
    assert.equal(await code(makeFrame({ type: FrameType.CHUNK, session, meta })), ErrorCode.BAD_FRAME, JSON.stringify(meta));
  }
  const withTensor = makeFrame({ type: FrameType.CHUNK, session, meta: { kind: 'have', model: MODEL }, tensors: [{ name: 'x', dtype: 'uint8', shape: [1], data: new Uint8Array(1) }] });
  assert.equal(await code(withTensor), ErrorCode.BAD_FRAME);
});

test('the seeder bounds requests in flight per requester, and a second', async () => {
  /** @type {(() => void)[]} */
  const gates = [];
  const seeder = new BrowserSeeder({ log: quiet, requestsPerS: 4 });
  seeder.add({
    publication: PUBLICATION,
    signed: new Uint8Array(1),
    manifest: new Uint8Array(1),
    files: new Set(['a.onnx']),
    read: (file, offset, length) => new Promise((resolve) => gates.push(() => resolve(DATA['a.onnx'].slice(offset, offset + length)))),
  });
  const ask = () => seeder.handle('greedy', chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx', 0));
  const held = [ask(), ask(), ask(), ask()];
  assert.equal(String((await ask()).meta.code), ChunkErrorCode.BUSY, 'a fifth request in flight');
  const other = seeder.handle('other', chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx', 1));
  for (const open of gates.splice(0)) open();
  await Promise.all(held);
  await new Promise((r) => setTimeout(r, 0));
  for (const open of gates.splice(0)) open();
  assert.equal((await other).type, FrameType.CHUNK, 'another requester is not held up');
  assert.equal(String((await ask()).meta.code), ChunkErrorCode.RATE_LIMITED, 'over its requests a second');
});

test('a manifest from seeders is believed only when it verifies; the highest version wins', async () => {
  const DIR = new URL('../../tests/vectors/registry/', import.meta.url);
  const read = async (/** @type {string} */ name) => new Uint8Array(await readFile(new URL(name, DIR)));
  const signed = await read('manifest.sig.json');
  const manifestBytes = await read('manifest.json');
  const { publisher } = JSON.parse(new TextDecoder().decode(await read('publisher.json')));
  const publication = parsePublication(JSON.parse(new TextDecoder().decode(signed)));
  const name = publication.model;
  /** @param {string} id @param {Uint8Array} s @param {Uint8Array} m */
  const seederOf = (id, s, m) => {
    const seeder = new BrowserSeeder({ log: quiet });
    seeder.add({ publication, signed: s, manifest: m, files: new Set(), read: async () => new Uint8Array(0) });
    return { id, call: async (/** @type {any} */ frame) => decodeFrame(encodeFrame(await seeder.handle('me', decodeFrame(encodeFrame(frame))))) };
  };
  const altered = manifestBytes.slice();
  altered[10] ^= 1;
  const resigned = JSON.parse(new TextDecoder().decode(signed));
  resigned.body.version += 1;
  const forged = new TextEncoder().encode(JSON.stringify(resigned));
  const silent = { id: 'e'.repeat(64), call: async (/** @type {any} */ frame) => errorFrame(frame.session, 0, ChunkErrorCode.NOT_SEEDED, 'no') };
  const trusted = { trusted: [publisher], allowUnsigned: false };
  const sources = [seederOf('b'.repeat(64), signed, altered), seederOf('c'.repeat(64), forged, manifestBytes), silent, seederOf('d'.repeat(64), signed, manifestBytes)];
  const got = await fetchSeededManifest(sources, name, trusted, { log: quiet });
  assert.ok(got !== null);
  assert.equal(got.from, 'd'.repeat(64), 'only the honest seeder is believed');
  assert.equal(got.publication.version, publication.version);
  assert.deepEqual(got.manifestBytes, manifestBytes);
  assert.equal(await fetchSeededManifest(sources, name, { trusted: [], allowUnsigned: true }, { log: quiet }), null, 'an untrusted publisher is refused');
  assert.equal(await fetchSeededManifest(sources.slice(0, 3), name, trusted, { log: quiet }), null);
});

test('a link source matches answers to requests by session and fails its calls when closed', async () => {
  /** @type {any[]} */
  const sent = [];
  const source = new LinkSource({ remoteId: 'f'.repeat(64), send: async (frame) => void sent.push(frame) });
  const first = source.call(haveRequest(MODEL), 5_000);
  const second = source.call(manifestRequest(MODEL), 5_000);
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(source.deliver(errorFrame(new Uint8Array(16), 0, 'x', 'stray')), false, 'an answer nobody waits for is dropped');
  assert.ok(source.deliver(errorFrame(sent[1].session, 0, ChunkErrorCode.NOT_SEEDED, 'no')));
  assert.equal(String((await second).meta.code), ChunkErrorCode.NOT_SEEDED);
  source.close('test over');
  await assert.rejects(first, /closed: test over/);
  await assert.rejects(source.call(haveRequest(MODEL), 5_000), /closed/);
});

test('a source that never answers is dropped and its chunks fetched elsewhere; a malformed have is not believed', async () => {
  const silent = {
    id: '1'.repeat(63) + '0',
    calls: { chunks: 0 },
    /** @param {any} frame @param {number} timeoutMs */
    async call(frame, timeoutMs) {
      if (frame.meta.kind === 'have') return makeFrame({ type: FrameType.CHUNK, session: frame.session, meta: { kind: 'have', model: MODEL, publisher: PUBLISHER, version: 3, files: Object.keys(DATA) } });
      this.calls.chunks++;
      await new Promise((resolve) => setTimeout(resolve, timeoutMs));
      throw new Error(`no answer within ${timeoutMs} ms`);
    },
  };
  const escaping = {
    id: '2'.repeat(63) + '0',
    /** @param {any} frame */
    async call(frame) {
      return makeFrame({ type: FrameType.CHUNK, session: frame.session, meta: { kind: 'have', model: MODEL, publisher: PUBLISHER, version: 3, files: ['../../secret'] } });
    },
  };
  const honest = peer('3'.repeat(63) + '0');
  const fetcher = new ChunkFetcher({ log: quiet, timeoutMs: 50 });
  const holders = await fetcher.holdings([silent, escaping, honest], PUBLICATION);
  assert.deepEqual(holders.map((h) => h.source.id), [silent.id, honest.id], 'the malformed have answer is left out');
  const got = await fetcher.fetchFiles({ publication: PUBLICATION, files: FILES, sources: holders });
  assert.deepEqual(got.get('a.onnx'), DATA['a.onnx']);
  assert.ok(silent.calls.chunks >= 1 && silent.calls.chunks <= MAX_CHUNK_REQUESTS_IN_FLIGHT, 'dropped after its first silence');
  assert.ok(!fetcher.banned(silent.id), 'silence is not a lie: dropped, not banned');
});

test('the seeder paces its upload, and answers busy rather than hold an answer past 20 s', async () => {
  /** @type {number[]} */
  const slept = [];
  const now = 0;
  const seeder = new BrowserSeeder({ log: quiet, uploadBytesPerS: CHUNK_BYTES, now: () => now, sleep: async (ms) => void slept.push(ms) });
  seeder.add({ publication: PUBLICATION, signed: new Uint8Array(1), manifest: new Uint8Array(1), files: new Set(['a.onnx']), read: async (f, o, l) => DATA['a.onnx'].slice(o, o + l) });
  const ask = (/** @type {number} */ index) => seeder.handle(`r${index}`, chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx', index));
  assert.equal((await ask(0)).type, FrameType.CHUNK);
  assert.deepEqual(slept, [], 'the first chunk is within the burst');
  assert.equal((await ask(1)).type, FrameType.CHUNK);
  assert.ok(Math.abs(slept[0] - 1000) < 1, `the second waits a second at 1 MiB/s, not ${slept[0]} ms`);
  const many = new BrowserSeeder({ log: quiet, uploadBytesPerS: 1000, now: () => now, sleep: async () => {} });
  many.add({ publication: PUBLICATION, signed: new Uint8Array(1), manifest: new Uint8Array(1), files: new Set(['a.onnx']), read: async (f, o, l) => DATA['a.onnx'].slice(o, o + l) });
  const answer = await many.handle('r', chunkRequest(MODEL, PUBLISHER, 3, 'a.onnx', 0));
  assert.equal(String(answer.meta.code), ChunkErrorCode.BUSY);
  assert.match(String(answer.meta.message), /upload rate is taken/);
  assert.equal(many.chunksSent, 0);
});

// @ts-check
/**
 * A model's signed manifest checked in the browser before anything of the model is used: the mirror of
 * python_peer/core/publication.py and publisher_trust.py (docs/manifest.md). A signaling node's
 * `--model-dir` serves `manifest.sig.json` beside `manifest.json`; `fetchVerifiedManifest` refuses the
 * model unless
 *
 * - the signed manifest parses within its bounds and carries its publisher's Ed25519 signature over
 *   `ai4all/manifest/v1` + newline + canonical JSON of its body (WebCrypto, web/src/identity);
 * - `manifest.json`'s bytes are the pinned ones (size and sha256), so every shard hash it states is the
 *   publisher's, and `files` names exactly the files the manifest names, with the same sha256 and size;
 * - the publisher is one the page's configuration trusts (`publishers.trusted` of `/v1/config`: the
 *   node's `--trust-publisher` list). A page whose node serves unsigned local exports
 *   (`publishers.allow_unsigned`) takes a model with no `manifest.sig.json` at all, never one whose
 *   signature fails.
 *
 * Shards are then checked against the verified manifest by `fetchShard` (size and sha256) before
 * onnxruntime sees a byte; the tokenizer and chat template, which the manifest does not hash, against
 * the publication (`checkPublishedFile`). A node serving an altered file is refused with an error that
 * says what was altered. No DOM.
 */

import { canonicalBytes, verifyBody } from '../identity/identity.js';
import {
  CHUNK_BYTES,
  MANIFEST_CONTEXT,
  MAX_FILE_BYTES,
  MAX_PUBLISHED_FILES,
  MAX_RECORD_BYTES,
  MAX_SIGNED_MANIFEST_BYTES,
  PUBLICATION_VERSION,
  RECORD_CONTEXT,
  RECORD_VERSION,
  SIGNED_MANIFEST_FILE,
} from '../protocol/constants.js';
import { sha256Hex } from './download.js';

const MANIFEST_FILE = 'manifest.json'; // pinned by the signed body's 'manifest' field
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const HEX64 = /^[0-9a-f]{64}$/;
const MODEL_RE = /^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$/;

export class PublicationError extends Error {
  name = 'PublicationError';
}

/** A publisher the page does not trust; `publisher` is its id. */
export class UntrustedPublisherError extends PublicationError {
  name = 'UntrustedPublisherError';
  /** @param {string} message @param {string} publisher */
  constructor(message, publisher) {
    super(message);
    this.publisher = publisher;
  }
}

/** @typedef {{file: string, bytes: number, sha256: string, chunks: string[]}} PublishedFile */
/**
 * @typedef {{publisher: string, model: string, version: number, issuedMs: number,
 *   manifestBytes: number, manifestSha256: string, files: PublishedFile[], body: object, sig: string}} Publication
 */
/** Which publishers the page trusts. @typedef {{trusted: string[], allowUnsigned: boolean}} TrustPolicy */

/**
 * @param {unknown} data
 * @param {string[]} keys
 * @param {string} what
 * @returns {Record<string, any>}
 */
function exactKeys(data, keys, what) {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new PublicationError(`${what} must be a JSON object`);
  const have = Object.keys(data).sort();
  const want = [...keys].sort();
  if (have.length !== want.length || have.some((k, i) => k !== want[i])) {
    throw new PublicationError(`${what} has fields ${JSON.stringify(have)}, not ${JSON.stringify(want)}`);
  }
  return /** @type {Record<string, any>} */ (data);
}

/** @param {unknown} value @param {number} low @param {number} high @param {string} name */
function int(value, low, high, name) {
  if (!Number.isSafeInteger(value) || /** @type {number} */ (value) < low || /** @type {number} */ (value) > high) {
    throw new PublicationError(`${name} must be an integer in [${low}, ${high}], not ${JSON.stringify(value)}`);
  }
  return /** @type {number} */ (value);
}

/** @param {unknown} name */
function plainFileName(name) {
  return typeof name === 'string' && name.length > 0 && name.length <= 255 && !/[/\\\0]/.test(name) && !name.startsWith('.');
}

/**
 * Parse `manifest.sig.json` (already JSON) by the schema of docs/manifest.md; nothing is verified yet.
 * @param {unknown} data
 * @returns {Publication}
 */
export function parsePublication(data) {
  const outer = exactKeys(data, ['body', 'sig'], 'a signed manifest');
  const body = exactKeys(outer.body, ['v', 'publisher', 'model', 'version', 'issued_ms', 'manifest', 'chunk_bytes', 'files'], 'a signed manifest body');
  int(body.v, PUBLICATION_VERSION, PUBLICATION_VERSION, 'v (the signed manifest version)');
  int(body.chunk_bytes, CHUNK_BYTES, CHUNK_BYTES, 'chunk_bytes');
  if (typeof body.publisher !== 'string' || !HEX64.test(body.publisher)) throw new PublicationError('publisher must be a peer id (64 lowercase hex digits)');
  if (typeof body.model !== 'string' || !MODEL_RE.test(body.model)) throw new PublicationError(`model ${JSON.stringify(body.model)} is not a model name`);
  const pinned = exactKeys(body.manifest, ['file', 'bytes', 'sha256'], "the signed manifest's 'manifest'");
  if (pinned.file !== MANIFEST_FILE) throw new PublicationError(`a signed manifest pins ${MANIFEST_FILE}, not ${JSON.stringify(pinned.file)}`);
  if (typeof pinned.sha256 !== 'string' || !HEX64.test(pinned.sha256)) throw new PublicationError("the manifest's sha256 is not 64 lowercase hex digits");
  if (!Array.isArray(body.files) || body.files.length < 1 || body.files.length > MAX_PUBLISHED_FILES) {
    throw new PublicationError(`a publication lists 1 to ${MAX_PUBLISHED_FILES} files`);
  }
  /** @type {PublishedFile[]} */
  const files = body.files.map((/** @type {unknown} */ raw) => {
    const f = exactKeys(raw, ['file', 'bytes', 'sha256', 'chunks'], 'a published file');
    if (!plainFileName(f.file)) throw new PublicationError(`file name ${JSON.stringify(f.file)} is not a plain file name`);
    int(f.bytes, 1, MAX_FILE_BYTES, `file ${f.file}: bytes`);
    if (typeof f.sha256 !== 'string' || !HEX64.test(f.sha256)) throw new PublicationError(`file ${f.file}: sha256 is not 64 lowercase hex digits`);
    const count = Math.max(1, Math.ceil(f.bytes / CHUNK_BYTES));
    if (!Array.isArray(f.chunks) || f.chunks.length !== count || !f.chunks.every((/** @type {unknown} */ c) => typeof c === 'string' && HEX64.test(c))) {
      throw new PublicationError(`file ${f.file}: ${count} chunk hashes expected (one per ${CHUNK_BYTES} bytes)`);
    }
    return { file: f.file, bytes: f.bytes, sha256: f.sha256, chunks: f.chunks };
  });
  const names = files.map((f) => f.file);
  if (names.some((n, i) => i > 0 && !(names[i - 1] < n))) throw new PublicationError('a publication lists its files once each, sorted by name');
  if (names.includes(MANIFEST_FILE)) throw new PublicationError(`${MANIFEST_FILE} is pinned by 'manifest', not listed among the files`);
  if (typeof outer.sig !== 'string' || !/^[0-9a-f]{128}$/.test(outer.sig)) throw new PublicationError('sig must be 128 lowercase hex digits');
  return {
    publisher: body.publisher,
    model: body.model,
    version: int(body.version, 0, MAX_SAFE, 'version'),
    issuedMs: int(body.issued_ms, 0, MAX_SAFE, 'issued_ms'),
    manifestBytes: int(pinned.bytes, 1, MAX_SIGNED_MANIFEST_BYTES, 'manifest bytes'),
    manifestSha256: pinned.sha256,
    files,
    body,
    sig: outer.sig,
  };
}

/**
 * Every file a manifest names -> its [sha256, bytes] where the manifest states them (shard files), else null.
 * @param {any} manifest
 * @returns {Map<string, [string, number] | null>}
 */
export function namedFiles(manifest) {
  /** @type {Map<string, [string, number] | null>} */
  const named = new Map();
  for (const shard of Array.isArray(manifest?.shards) ? manifest.shards : []) {
    const files = Array.isArray(shard?.files) ? shard.files : [shard];
    for (const item of files) named.set(String(item?.file), [String(item?.sha256), Number(item?.bytes)]);
  }
  for (const key of ['file', 'chat_template_file']) {
    const name = manifest?.tokenizer?.[key];
    if (name !== undefined && name !== null) {
      if (!plainFileName(name) || named.has(name)) throw new PublicationError(`tokenizer ${key} ${JSON.stringify(name)} is not a plain file name of its own`);
      named.set(name, null);
    }
  }
  return named;
}

/**
 * Verify a signed manifest against the bytes of `manifest.json` and the page's trust: the signature,
 * the pinned bytes, the files, then the publisher. Returns the manifest parsed from the verified bytes.
 * @param {unknown} signedData `manifest.sig.json`, parsed
 * @param {Uint8Array} manifestBytes `manifest.json` as served
 * @param {TrustPolicy} policy
 * @returns {Promise<{manifest: any, publication: Publication}>}
 */
export async function verifyPublication(signedData, manifestBytes, policy) {
  const publication = parsePublication(signedData);
  const who = publication.publisher.slice(0, 12);
  try {
    await verifyBody(publication.publisher, MANIFEST_CONTEXT, publication.body, publication.sig);
  } catch (err) {
    throw new PublicationError(
      `the signed manifest of ${publication.model} does not carry a valid signature of publisher ${who}…: ` +
        `it was altered after signing or signed by another key (${err instanceof Error ? err.message : err})`,
    );
  }
  if (manifestBytes.byteLength !== publication.manifestBytes || (await sha256Hex(manifestBytes)) !== publication.manifestSha256) {
    throw new PublicationError(`${MANIFEST_FILE} is not the manifest publisher ${who}… signed: it was altered`);
  }
  let manifest;
  try {
    manifest = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(manifestBytes));
  } catch (err) {
    throw new PublicationError(`${MANIFEST_FILE} is not JSON: ${err instanceof Error ? err.message : err}`);
  }
  if (manifest?.model?.name !== publication.model) {
    throw new PublicationError(`the publication is of model ${publication.model}, the manifest of ${JSON.stringify(manifest?.model?.name)}`);
  }
  const named = namedFiles(manifest);
  const listed = new Map(publication.files.map((f) => [f.file, f]));
  const missing = [...named.keys()].filter((n) => !listed.has(n));
  const extra = [...listed.keys()].filter((n) => !named.has(n));
  if (missing.length || extra.length) {
    throw new PublicationError(`the publication lists ${JSON.stringify(extra.slice(0, 4))} that the manifest does not name and misses ${JSON.stringify(missing.slice(0, 4))}`);
  }
  for (const [name, known] of named) {
    const item = /** @type {PublishedFile} */ (listed.get(name));
    if (known !== null && (known[0] !== item.sha256 || known[1] !== item.bytes)) {
      throw new PublicationError(`file ${name}: the publication and the manifest disagree on its sha256 or size`);
    }
  }
  if (!policy.trusted.includes(publication.publisher)) {
    throw new UntrustedPublisherError(
      `${publication.model} is signed by publisher ${publication.publisher}, which this page's node does not trust ` +
        `(its operator trusts publishers with ai4all signal --trust-publisher ID): not used`,
      publication.publisher,
    );
  }
  return { manifest, publication };
}

/**
 * Refuse bytes that are not the published file `name` (size and sha256): for the files the manifest
 * does not hash (the tokenizer, the chat template).
 * @param {Publication | null} publication null: an unsigned export the page allows
 * @param {string} name
 * @param {Uint8Array} bytes
 */
export async function checkPublishedFile(publication, name, bytes) {
  if (publication === null) return;
  const item = publication.files.find((f) => f.file === name);
  if (item === undefined) throw new PublicationError(`the publication of ${publication.model} lists no file ${JSON.stringify(name)}`);
  if (bytes.byteLength !== item.bytes || (await sha256Hex(bytes)) !== item.sha256) {
    throw new PublicationError(`${name} is not the file publisher ${publication.publisher.slice(0, 12)}… signed: it was altered`);
  }
}

/**
 * Refuse a chunk that is not exactly chunk `index` of a published file (truncated, altered, another's).
 * @param {PublishedFile} file
 * @param {number} index
 * @param {Uint8Array} bytes
 */
export async function checkChunk(file, index, bytes) {
  if (!Number.isInteger(index) || index < 0 || index >= file.chunks.length) {
    throw new PublicationError(`file ${file.file} has chunks 0-${file.chunks.length - 1}, not ${index}`);
  }
  const length = Math.min(CHUNK_BYTES, file.bytes - index * CHUNK_BYTES);
  if (bytes.byteLength !== length) throw new PublicationError(`file ${file.file} chunk ${index}: ${bytes.byteLength} bytes, the publisher says ${length}`);
  if ((await sha256Hex(bytes)) !== file.chunks[index]) {
    throw new PublicationError(`file ${file.file} chunk ${index}: its sha256 is not the one the publisher signed`);
  }
}

/**
 * Check a registry record (`manifest.record.json`, or an item of a signaling node's `registry` answer:
 * docs/manifest.md, "The registry") alone: its schema, its size and its publisher's signature; with a
 * verified `publication`, also that it pins exactly that signed manifest. Returns the record's body.
 * @param {unknown} data `{"body", "sig"}`
 * @param {Publication | null} [publication]
 * @returns {Promise<Record<string, any>>}
 */
export async function verifyRecord(data, publication = null) {
  const outer = exactKeys(data, ['body', 'sig'], 'a record');
  let size;
  try {
    size = canonicalBytes(outer).byteLength;
  } catch (err) {
    throw new PublicationError(`a record has no canonical JSON form: ${err instanceof Error ? err.message : err}`);
  }
  if (size > MAX_RECORD_BYTES) throw new PublicationError(`a record is ${size} bytes of canonical JSON, over ${MAX_RECORD_BYTES}`);
  const body = exactKeys(outer.body, ['v', 'publisher', 'model', 'version', 'issued_ms', 'signed_sha256', 'total_bytes', 'files'], 'a record body');
  int(body.v, RECORD_VERSION, RECORD_VERSION, 'v (the record version)');
  if (typeof body.publisher !== 'string' || !HEX64.test(body.publisher)) throw new PublicationError("a record's publisher must be a peer id");
  if (typeof body.model !== 'string' || !MODEL_RE.test(body.model)) throw new PublicationError(`a record's model ${JSON.stringify(body.model)} is not a model name`);
  int(body.version, 0, MAX_SAFE, 'version');
  int(body.issued_ms, 0, MAX_SAFE, 'issued_ms');
  if (typeof body.signed_sha256 !== 'string' || !HEX64.test(body.signed_sha256)) throw new PublicationError("a record's signed_sha256 is not 64 lowercase hex digits");
  int(body.total_bytes, 1, MAX_SAFE, 'total_bytes');
  int(body.files, 1, MAX_PUBLISHED_FILES, 'files');
  try {
    await verifyBody(body.publisher, RECORD_CONTEXT, body, outer.sig);
  } catch (err) {
    throw new PublicationError(
      `the record of ${body.model} version ${body.version} does not carry a valid signature of publisher ` +
        `${body.publisher.slice(0, 12)}…: forged, altered or signed by another key (${err instanceof Error ? err.message : err})`,
    );
  }
  if (publication !== null) {
    const same = publication.publisher === body.publisher && publication.model === body.model && publication.version === body.version;
    if (!same || (await sha256Hex(canonicalBytes(publication.body))) !== body.signed_sha256) {
      throw new PublicationError(`the signed manifest of ${body.model} version ${body.version} is not the one its record pins`);
    }
    const total = publication.manifestBytes + publication.files.reduce((n, f) => n + f.bytes, 0);
    if (total !== body.total_bytes || publication.files.length !== body.files) {
      throw new PublicationError(`the record of ${body.model} misstates the size of its publication`);
    }
  }
  return body;
}

/**
 * The trust of a page configuration (`/v1/config`'s `publishers`): absent, nothing is trusted.
 * @param {any} config
 * @returns {TrustPolicy}
 */
export function trustPolicy(config) {
  const p = config?.publishers;
  const trusted = Array.isArray(p?.trusted) ? p.trusted.filter((/** @type {unknown} */ id) => typeof id === 'string' && HEX64.test(id)) : [];
  return { trusted, allowUnsigned: p?.allow_unsigned === true };
}

/**
 * @param {URL} url
 * @param {number} limit
 * @returns {Promise<Uint8Array | null>} null: HTTP 404
 */
async function fetchBytes(url, limit) {
  let response;
  try {
    response = await fetch(url, { cache: 'no-store' });
  } catch (err) {
    throw new PublicationError(`cannot download ${url.pathname}: ${err instanceof Error ? err.message : err}`);
  }
  if (response.status === 404) return null;
  if (!response.ok) throw new PublicationError(`cannot download ${url.pathname}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.byteLength > limit) throw new PublicationError(`${url.pathname} is over ${limit} bytes: refused`);
  return bytes;
}

/**
 * Fetch a model's `manifest.json` and `manifest.sig.json` from the folder `base` and verify them
 * (`verifyPublication`); with no signed manifest, the model is used only if the page allows unsigned
 * exports. Returns the manifest parsed from the verified bytes and its publication (null: unsigned).
 * @param {string | URL} base the folder of `manifest.json`, ending in `/`
 * @param {TrustPolicy} policy
 * @param {boolean} [signed] false: the page configuration says the model has no signed manifest (taken
 *   only where the page allows unsigned exports, and then not asked for)
 * @returns {Promise<{manifest: any, publication: Publication | null}>}
 */
export async function fetchVerifiedManifest(base, policy, signed = true) {
  const folder = new URL(String(base), globalThis.location?.href ?? 'http://localhost/');
  if (!folder.pathname.endsWith('/')) folder.pathname += '/';
  if (!signed && !policy.allowUnsigned) {
    throw new PublicationError(`the model at ${folder} has no signed manifest (${SIGNED_MANIFEST_FILE}): not used`);
  }
  const [manifestBytes, signedBytes] = await Promise.all([
    fetchBytes(new URL(MANIFEST_FILE, folder), MAX_SIGNED_MANIFEST_BYTES),
    signed ? fetchBytes(new URL(SIGNED_MANIFEST_FILE, folder), MAX_SIGNED_MANIFEST_BYTES) : Promise.resolve(null),
  ]);
  if (manifestBytes === null) throw new PublicationError(`${new URL(MANIFEST_FILE, folder)}: HTTP 404`);
  if (signedBytes === null) {
    if (!policy.allowUnsigned) {
      throw new PublicationError(`the model at ${folder} has no signed manifest (${SIGNED_MANIFEST_FILE}): not used`);
    }
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(manifestBytes));
    } catch (err) {
      throw new PublicationError(`${MANIFEST_FILE} is not JSON: ${err instanceof Error ? err.message : err}`);
    }
    return { manifest, publication: null };
  }
  let signedData;
  try {
    signedData = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(signedBytes));
  } catch (err) {
    throw new PublicationError(`${SIGNED_MANIFEST_FILE} is not JSON: ${err instanceof Error ? err.message : err}`);
  }
  return verifyPublication(signedData, manifestBytes, policy);
}

// @ts-check
/**
 * Where a browser node gets its model's files, and how it seeds them (docs/chunks.md, "In the browser").
 *
 * - `ModelFiles.open` looks up the peers serving the model through signaling, offers each a WebRTC
 *   link over the node's transport (up to `MAX_SOURCES`), and asks them for the signed manifest
 *   (`fetchSeededManifest`: each answer checked alone against the page's trusted publishers; the
 *   highest version wins). Only when no peer gives one is the manifest fetched over HTTP from the
 *   signaling node's `--model-dir` (a log line says so); an unsigned model the page allows comes from
 *   there too, and is neither fetched from peers nor seeded.
 * - `fetchFile` (a `FetchFile` for `ShardRunner.load`): a cached copy whose size and sha256 still match;
 *   else the file in verified chunks from every peer that holds it (`ChunkFetcher`), stored in the
 *   IndexedDB shard cache once whole and verified; else, when no peer seeds it, over HTTP from the
 *   signaling node (a log line says so).
 * - `seed()` gives a `BrowserSeeder` for the files this node holds whole and verified in the cache;
 *   the node hands it every CHUNK frame (web/src/node/node.js).
 * No DOM.
 */

import { MAX_LAYER } from '../protocol/constants.js';
import { ChunkFetcher, LinkSource, fetchSeededManifest } from '../runtime/chunk_fetch.js';
import { sha256Hex } from '../runtime/download.js';
import { PublicationError, verifyPublication } from '../runtime/publication.js';
import { ShardCache, fetchShardCached } from '../storage/db.js';
import { NodeError, checkManifest, fetchManifest, folder } from './config.js';
import { BrowserSeeder } from './seeder.js';

/** Peers asked for a model's files at most (as python_peer/download.py). */
export const MAX_SOURCES = 16;
const CONNECT_TIMEOUT_MS = 15_000;
const MAX_MANIFEST_BYTES = 64 * 2 ** 20;

/** @typedef {import('./core.js').Logger} Logger */
/** @typedef {import('../runtime/publication.js').Publication} Publication */

/** @param {unknown} err */
const message = (err) => (err instanceof Error ? err.message : String(err));

/**
 * @param {URL} url
 * @returns {Promise<Uint8Array | null>} null: HTTP 404
 */
async function httpBytes(url) {
  const response = await fetch(url, { cache: 'no-store' });
  if (response.status === 404) return null;
  if (!response.ok) throw new PublicationError(`cannot download ${url.pathname}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  if (bytes.byteLength > MAX_MANIFEST_BYTES) throw new PublicationError(`${url.pathname} is over ${MAX_MANIFEST_BYTES} bytes`);
  return bytes;
}

/** A node's model files: from peers in verified chunks when they seed them, seeded on in turn. */
export class ModelFiles {
  /** @type {Map<any, LinkSource>} */
  #byLink = new Map();
  /** @type {import('../runtime/chunk_fetch.js').SourceState[] | null} */
  #holdings = null;
  /** @type {Map<string, string>} file -> sha256 of the files held whole and verified in the cache */
  #held = new Map();

  /**
   * @param {object} options
   * @param {IDBDatabase} options.db
   * @param {import('./core.js').BrowserNodeCore} options.core  connected to signaling
   * @param {{name: string, base: string, signed?: boolean}} options.modelEntry
   * @param {import('../runtime/publication.js').TrustPolicy} options.policy
   * @param {Logger} options.log
   */
  constructor({ db, core, modelEntry, policy, log }) {
    this.db = db;
    this.core = core;
    this.modelEntry = modelEntry;
    this.policy = policy;
    this.log = log;
    this.fetcher = new ChunkFetcher({ log });
    /** @type {any} */
    this.manifest = null;
    /** @type {Publication | null} */
    this.publication = null;
    /** @type {Uint8Array | null} */
    this.signedBytes = null;
    /** @type {Uint8Array | null} */
    this.manifestBytes = null;
    /** @type {LinkSource[]} */
    this.sources = [];
    /** Where the bytes came from, for the log and the tests. */
    this.counts = { cached: 0, peers: 0, http: 0 };
    this.role = {
      serves: false,
      claims: (/** @type {any} */ link) => this.#byLink.has(link),
      onFrame: (/** @type {any} */ link, /** @type {any} */ frame) => {
        this.#byLink.get(link)?.deliver(frame);
      },
      onLinkClosed: (/** @type {any} */ link) => {
        this.#byLink.get(link)?.close('the link closed');
        this.#byLink.delete(link);
      },
    };
  }

  /**
   * Find the peers serving the model, link to them and take the signed manifest from them (or, when
   * none gives one, over HTTP); `manifest` is then the verified manifest.
   * @param {ConstructorParameters<typeof ModelFiles>[0]} options
   */
  static async open(options) {
    const files = new ModelFiles(options);
    await files.#open();
    return files;
  }

  async #open() {
    const name = this.modelEntry.name;
    if (this.modelEntry.signed === false) {
      this.manifest = await fetchManifest(this.modelEntry, this.policy);
      this.log.info(`${name} is an unsigned export: its files come over HTTP from the signaling node and are not seeded`);
      return;
    }
    await this.#link();
    const seeded = this.sources.length > 0 ? await fetchSeededManifest(this.sources, name, this.policy, { log: this.log }) : null;
    if (seeded !== null) {
      this.log.info(`the signed manifest of ${name} (version ${seeded.publication.version}) came from peer ${seeded.from.slice(0, 8)}`);
      this.#use(checkManifest(seeded.manifest, name, `peer ${seeded.from.slice(0, 16)}`), seeded.publication, seeded.signed, seeded.manifestBytes);
      return;
    }
    this.log.info(`no peer gave the signed manifest of ${name}: fetching it over HTTP from the signaling node`);
    const base = folder(this.modelEntry.base);
    try {
      const [signed, manifestBytes] = await Promise.all([httpBytes(new URL('manifest.sig.json', base)), httpBytes(new URL('manifest.json', base))]);
      if (signed === null || manifestBytes === null) {
        // no signed manifest: an unsigned export, taken only where the page allows it (config.js says why not)
        this.manifest = await fetchManifest(this.modelEntry, this.policy);
        return;
      }
      const { manifest, publication } = await verifyPublication(JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(signed)), manifestBytes, this.policy);
      this.#use(checkManifest(manifest, name, String(new URL('manifest.json', base))), publication, signed, manifestBytes);
    } catch (err) {
      if (err instanceof NodeError) throw err;
      throw new NodeError(`the model ${name} is refused: ${message(err)}`, { cause: err });
    }
  }

  /** @param {any} manifest @param {Publication} publication @param {Uint8Array} signed @param {Uint8Array} manifestBytes */
  #use(manifest, publication, signed, manifestBytes) {
    this.manifest = manifest;
    this.publication = publication;
    this.signedBytes = signed;
    this.manifestBytes = manifestBytes;
  }

  /** Offer a link to up to MAX_SOURCES peers serving the model (in parallel; failures are logged). */
  async #link() {
    const signal = /** @type {import('./core.js').CoreSignal} */ (this.core.signal);
    const transport = /** @type {import('./core.js').NodeTransport} */ (this.core.openTransport());
    if (transport.connect === undefined) return;
    this.core.plug(this.role);
    let found;
    try {
      found = await signal.lookup(this.modelEntry.name, 0, MAX_LAYER, { limit: MAX_SOURCES * 2 });
    } catch (err) {
      this.log.warn(`cannot look up the peers seeding ${this.modelEntry.name}: ${message(err)}`);
      return;
    }
    const self = this.core.identity.peerId;
    const ids = [...new Set(found.map((p) => p.peer_id))].filter((id) => id !== self).slice(0, MAX_SOURCES);
    const connect = /** @type {NonNullable<import('./core.js').NodeTransport['connect']>} */ (transport.connect).bind(transport);
    const links = await Promise.all(
      ids.map(async (id) => {
        try {
          const link = await connect(id, { timeoutMs: CONNECT_TIMEOUT_MS });
          const source = new LinkSource(link);
          this.#byLink.set(link, source);
          return source;
        } catch (err) {
          this.log.info(`no link to peer ${id.slice(0, 8)} for ${this.modelEntry.name}'s files: ${message(err)}`);
          return null;
        }
      }),
    );
    this.sources = links.filter((s) => s !== null);
  }

  /**
   * A `FetchFile` for `ShardRunner.load`: the cache, else peers in verified chunks, else HTTP.
   * @param {Record<string, any>} meta  what the cache records with the file
   * @param {() => void} [onFetched]  told when the bytes did not all come from the cache
   * @returns {import('../runtime/download.js').FetchFile}
   */
  fetchFile(meta = {}, onFetched = () => {}) {
    return async (url, listed, onProgress) => {
      const cache = new ShardCache(this.db);
      try {
        const hit = await cache.get(listed.sha256);
        if (hit !== null && hit.bytes.byteLength === listed.bytes && (await sha256Hex(hit.bytes)) === listed.sha256) {
          this.counts.cached++;
          this.#held.set(listed.file, listed.sha256);
          onProgress?.(listed.bytes, listed.bytes);
          return hit.bytes;
        }
        if (hit !== null) {
          this.log.warn(`cached ${listed.file} is corrupt (size or sha256 differ): fetching it again`);
          await cache.delete(listed.sha256);
        }
      } catch (err) {
        this.log.warn(`shard cache unreadable, fetching ${listed.file}: ${message(err)}`);
      }
      onFetched();
      const published = this.publication?.files.find((f) => f.file === listed.file);
      if (published !== undefined && published.sha256 === listed.sha256 && published.bytes === listed.bytes && this.sources.length > 0) {
        this.#holdings ??= await this.fetcher.holdings(this.sources, /** @type {Publication} */ (this.publication));
        const holders = this.#holdings.filter((s) => s.dropped === null && s.files.has(listed.file));
        if (holders.length > 0) {
          const files = await this.fetcher.fetchFiles({
            publication: /** @type {Publication} */ (this.publication),
            files: [published],
            sources: holders,
            onProgress,
            store: async (file, bytes) => {
              try {
                await cache.put(file.sha256, bytes, { url: String(url), ...meta });
                this.#held.set(file.file, file.sha256);
              } catch (err) {
                this.log.warn(`${file.file} not cached (so not seeded): ${message(err)}`);
              }
            },
          });
          this.counts.peers++;
          this.log.info(`fetched ${listed.file} from ${holders.length} peers in verified chunks`);
          return /** @type {Uint8Array} */ (files.get(listed.file));
        }
      }
      this.log.info(`no peer seeds ${listed.file}: downloading it over HTTP from the signaling node`);
      this.counts.http++;
      const bytes = await fetchShardCached(this.db, url, listed.sha256, listed.bytes, onProgress, { meta, log: this.log });
      if (this.publication !== null) this.#held.set(listed.file, listed.sha256);
      return bytes;
    };
  }

  /**
   * A seeder for the files held whole and verified (null for an unsigned model); chunks are read from
   * the cache and checked again before they leave.
   * @returns {BrowserSeeder | null}
   */
  seed() {
    if (this.publication === null || this.signedBytes === null || this.manifestBytes === null) return null;
    const cache = new ShardCache(this.db);
    const held = new Map(this.#held);
    const seeder = new BrowserSeeder({ log: this.log });
    seeder.add({
      publication: this.publication,
      signed: this.signedBytes,
      manifest: this.manifestBytes,
      files: new Set(held.keys()),
      read: (file, offset, length) => cache.readRange(/** @type {string} */ (held.get(file)), offset, length),
    });
    return seeder;
  }

  /** Close the links opened to fetch (the seeders link back when they need us) and unplug. */
  close() {
    for (const [link, source] of this.#byLink) {
      source.close('the model files are fetched');
      this.#byLink.delete(link);
    }
    this.core.unplug(this.role);
  }
}

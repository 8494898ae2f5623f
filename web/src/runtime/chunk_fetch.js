// @ts-check
/**
 * Model files fetched from peers in verified chunks (docs/chunks.md, "The downloader"), the browser's
 * mirror of python_peer/download.py. A source is anything that answers a CHUNK request frame with a
 * frame (`ChunkSource`: a data channel link through `LinkSource`, or a fake in tests).
 *
 * - `fetchSeededManifest` asks every source for the signed manifest and checks each answer alone
 *   (`verifyPublication`: signature, pinned `manifest.json`, trusted publisher); the highest version wins.
 * - `ChunkFetcher.fetchFiles` asks each source which files it holds (`have`; one holding another
 *   publication is not used), then keeps up to `MAX_CHUNK_REQUESTS_IN_FLIGHT` chunk requests in flight
 *   per source. Each chunk is checked (length, then sha256 against the signed one) before it is kept;
 *   a file is handed to `store` only once all its chunks are in and its whole sha256 is the signed one.
 *   A source that sends a bad chunk (or a malformed answer) is banned for `SOURCE_BAN_MS` and the chunk
 *   asked of another; `busy` and `rate_limited` are retried later (0.2 s doubling to 5 s); `not_seeded`
 *   drops that file from that source; a failed link or a timeout drops the source. When no usable
 *   source holds a missing chunk, the fetch fails with a `ChunkFetchError` saying which and why, and no
 *   file that is not whole and verified is stored.
 * No DOM.
 */

import {
  CHUNK_REQUEST_TIMEOUT_MS,
  ChunkErrorCode,
  MAX_CHUNK_REQUESTS_IN_FLIGHT,
  SOURCE_BAN_MS,
} from '../protocol/constants.js';
import { FrameType } from '../protocol/wire.js';
import { sha256Hex } from './download.js';
import { PublicationError, checkChunk, verifyPublication } from './publication.js';
import { chunkRange, chunkRequest, haveRequest, manifestRequest, parseChunkAnswer, parseHaveAnswer, parseManifestAnswer } from './chunk_frames.js';

/** @typedef {import('../protocol/wire.js').Frame} Frame */
/** @typedef {import('./publication.js').Publication} Publication */
/** @typedef {import('./publication.js').PublishedFile} PublishedFile */
/** @typedef {{info(msg: string): void, warn(msg: string): void}} Logger */
/**
 * A peer that answers chunk requests: `call` resolves with its answer frame (an ERROR frame included)
 * and rejects when the link fails or no answer comes within `timeoutMs`.
 * @typedef {{id: string, call(frame: Frame, timeoutMs: number): Promise<Frame>}} ChunkSource
 */
/**
 * A verified signed manifest as seeders hand it out.
 * @typedef {{manifest: any, publication: Publication, signed: Uint8Array, manifestBytes: Uint8Array, from: string}} SeededManifest
 */

const RETRY_FIRST_MS = 200;
const RETRY_MAX_MS = 5_000;

/** The fetch cannot complete: no usable source holds a missing chunk. */
export class ChunkFetchError extends Error {
  name = 'ChunkFetchError';
}

/** @param {unknown} err */
const message = (err) => (err instanceof Error ? err.message : String(err));
/** @param {Uint8Array} bytes */
const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
/** @param {string} id */
const short = (id) => id.slice(0, 8);

/**
 * Request/answer over one link for chunk frames: answers are matched to requests by session.
 * The link's CHUNK and ERROR frames reach `deliver`; `close` fails every call waiting.
 */
export class LinkSource {
  /** @type {Map<string, {resolve: (frame: Frame) => void, reject: (err: Error) => void}>} */
  #pending = new Map();
  /** @type {Error | null} */
  #failure = null;

  /** @param {{remoteId: string, state?: string, send(frame: Frame): Promise<unknown>, close?(reason: string): void}} link */
  constructor(link) {
    this.link = link;
    this.id = link.remoteId;
  }

  /** @param {Frame} frame  a frame of the link: the answer of a waiting call, or dropped (false) */
  deliver(frame) {
    if (frame.type !== FrameType.CHUNK && frame.type !== FrameType.ERROR) return false;
    const key = hex(frame.session);
    const waiting = this.#pending.get(key);
    if (waiting === undefined) return false;
    this.#pending.delete(key);
    waiting.resolve(frame);
    return true;
  }

  /**
   * @param {Frame} frame
   * @param {number} timeoutMs
   * @returns {Promise<Frame>}
   */
  async call(frame, timeoutMs) {
    if (this.#failure !== null) throw this.#failure;
    const key = hex(frame.session);
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const answer = new Promise((resolve, reject) => {
      this.#pending.set(key, { resolve, reject });
      timer = setTimeout(() => reject(new Error(`peer ${short(this.id)} did not answer a chunk request within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      await this.link.send(frame);
      return /** @type {Frame} */ (await answer);
    } finally {
      clearTimeout(timer);
      this.#pending.delete(key);
    }
  }

  /** @param {string} reason */
  close(reason) {
    this.#failure = new Error(`link to ${short(this.id)} closed: ${reason}`);
    for (const waiting of this.#pending.values()) waiting.reject(this.#failure);
    this.#pending.clear();
    this.link.close?.(reason);
  }
}

/**
 * Ask every source for the signed manifest of `name` and check each answer alone; the highest
 * version that verifies (by a publisher `policy` trusts) wins. Null when no source gave one; `log`
 * says why each was refused.
 * @param {ChunkSource[]} sources
 * @param {string} name
 * @param {import('./publication.js').TrustPolicy} policy
 * @param {{log?: Logger, timeoutMs?: number}} [options]
 * @returns {Promise<SeededManifest | null>}
 */
export async function fetchSeededManifest(sources, name, policy, { log = console, timeoutMs = CHUNK_REQUEST_TIMEOUT_MS } = {}) {
  const answers = await Promise.all(
    sources.map(async (source) => {
      try {
        const frame = await source.call(manifestRequest(name), timeoutMs);
        if (frame.type === FrameType.ERROR) throw new Error(`${String(frame.meta.code)}: ${String(frame.meta.message)}`);
        const { signed, manifest: manifestBytes } = parseManifestAnswer(frame, name);
        let signedData;
        try {
          signedData = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(signed));
        } catch (err) {
          throw new PublicationError(`the signed manifest is not JSON: ${message(err)}`);
        }
        const { manifest, publication } = await verifyPublication(signedData, manifestBytes, policy);
        if (publication.model !== name) throw new PublicationError(`the signed manifest is of ${publication.model}, not ${name}`);
        return { manifest, publication, signed: signed.slice(), manifestBytes: manifestBytes.slice(), from: source.id };
      } catch (err) {
        log.warn(`the manifest of ${name} from peer ${short(source.id)} is refused: ${message(err)}`);
        return null;
      }
    }),
  );
  /** @type {SeededManifest | null} */
  let best = null;
  for (const answer of answers) {
    if (answer !== null && (best === null || answer.publication.version > best.publication.version)) best = answer;
  }
  return best;
}

/**
 * @typedef {object} SourceState
 * @property {ChunkSource} source
 * @property {Set<string>} files  the files it says it holds (of our publication)
 * @property {number} inFlight
 * @property {number} retryAt  ms: not asked before this (busy, rate_limited)
 * @property {number} backoffMs
 * @property {string | null} dropped  why it is no longer used, if so
 * @property {Map<string, string>} fileReasons  why a file was dropped from it
 */

/** Fetches files of one publication from many sources at once; bans outlive one fetch. */
export class ChunkFetcher {
  /** @type {Map<string, number>} source id -> banned until (ms) */
  bans = new Map();

  /**
   * @param {{log?: Logger, now?: () => number, timeoutMs?: number, banMs?: number, perSource?: number}} [options]
   */
  constructor({ log = console, now = () => Date.now(), timeoutMs = CHUNK_REQUEST_TIMEOUT_MS, banMs = SOURCE_BAN_MS, perSource = MAX_CHUNK_REQUESTS_IN_FLIGHT } = {}) {
    this.log = log;
    this.now = now;
    this.timeoutMs = timeoutMs;
    this.banMs = banMs;
    this.perSource = perSource;
    this.stats = { chunks: 0, sources: new Set(), banned: 0 };
  }

  /** @param {string} id */
  banned(id) {
    const until = this.bans.get(id);
    return until !== undefined && until > this.now();
  }

  /**
   * Which sources hold which files of `publication` (`have`); sources of another publication, banned
   * ones or ones that fail are left out.
   * @param {ChunkSource[]} sources
   * @param {Publication} publication
   * @returns {Promise<SourceState[]>}
   */
  async holdings(sources, publication) {
    const states = await Promise.all(
      sources.map(async (source) => {
        if (this.banned(source.id)) return null;
        try {
          const frame = await source.call(haveRequest(publication.model), this.timeoutMs);
          if (frame.type === FrameType.ERROR) {
            this.log.info(`peer ${short(source.id)} seeds no ${publication.model}: ${String(frame.meta.message)}`);
            return null;
          }
          const holding = parseHaveAnswer(frame, publication.model);
          if (holding.publisher !== publication.publisher || holding.version !== publication.version) {
            this.log.info(`peer ${short(source.id)} holds version ${holding.version} by ${holding.publisher.slice(0, 12)}…, not ours: not used`);
            return null;
          }
          return /** @type {SourceState} */ ({
            source,
            files: holding.files,
            inFlight: 0,
            retryAt: 0,
            backoffMs: RETRY_FIRST_MS,
            dropped: null,
            fileReasons: new Map(),
          });
        } catch (err) {
          this.log.warn(`peer ${short(source.id)} did not say what it holds: ${message(err)}`);
          return null;
        }
      }),
    );
    return states.filter((s) => s !== null);
  }

  /**
   * Fetch `files` of `publication` from `sources`, each chunk checked; `store(file, bytes)` gets each
   * file once whole and verified. Resolves with every file's bytes; rejects with ChunkFetchError when
   * a chunk has no usable source left.
   * @param {object} options
   * @param {Publication} options.publication
   * @param {PublishedFile[]} options.files
   * @param {ChunkSource[] | SourceState[]} options.sources  sources, or `holdings` already asked
   * @param {(file: PublishedFile, bytes: Uint8Array) => Promise<void>} [options.store]
   * @param {(received: number, total: number) => void} [options.onProgress]
   * @returns {Promise<Map<string, Uint8Array>>}
   */
  async fetchFiles({ publication, files, sources, store = async () => {}, onProgress }) {
    const states = sources.length > 0 && 'files' in sources[0] ? /** @type {SourceState[]} */ (sources) : await this.holdings(/** @type {ChunkSource[]} */ (sources), publication);
    /** @type {Map<string, Uint8Array>} */
    const buffers = new Map(files.map((f) => [f.file, new Uint8Array(f.bytes)]));
    /** @type {Map<string, number>} chunks still missing per file */
    const missing = new Map(files.map((f) => [f.file, f.chunks.length]));
    /** @type {{file: PublishedFile, index: number}[]} */
    const queue = files.flatMap((file) => file.chunks.map((_, index) => ({ file, index })));
    const total = files.reduce((sum, f) => sum + f.bytes, 0);
    let received = 0;
    /** @type {Set<Promise<void>>} */
    const running = new Set();
    /** @type {Error | null} */
    let storeFailure = null;

    /** @param {SourceState} state @param {string} fileName */
    const usable = (state, fileName) => state.dropped === null && !this.banned(state.source.id) && state.files.has(fileName);

    /** @param {SourceState} state @param {{file: PublishedFile, index: number}} task */
    const request = async (state, task) => {
      const { file, index } = task;
      const id = state.source.id;
      state.inFlight++;
      try {
        let frame;
        try {
          frame = await state.source.call(chunkRequest(publication.model, publication.publisher, publication.version, file.file, index), this.timeoutMs);
        } catch (err) {
          state.dropped = `its link failed: ${message(err)}`;
          this.log.warn(`peer ${short(id)} dropped as a source: ${state.dropped}`);
          queue.push(task);
          return;
        }
        if (frame.type === FrameType.ERROR) {
          const code = String(frame.meta.code);
          if (code === ChunkErrorCode.BUSY || code === ChunkErrorCode.RATE_LIMITED) {
            state.retryAt = this.now() + state.backoffMs;
            state.backoffMs = Math.min(RETRY_MAX_MS, state.backoffMs * 2);
          } else {
            state.files.delete(file.file);
            state.fileReasons.set(file.file, `it answered ${code}: ${String(frame.meta.message).slice(0, 200)}`);
          }
          queue.push(task);
          return;
        }
        let data;
        try {
          data = parseChunkAnswer(frame, file.file, index);
          await checkChunk(file, index, data);
        } catch (err) {
          this.bans.set(id, this.now() + this.banMs);
          this.stats.banned++;
          state.dropped = `banned: it sent a bad chunk (${message(err)})`;
          this.log.warn(`peer ${short(id)} sent a bad chunk ${index} of ${file.file}: banned for ${Math.round(this.banMs / 1000)} s, asking another (${message(err)})`);
          queue.push(task);
          return;
        }
        state.backoffMs = RETRY_FIRST_MS;
        /** @type {Uint8Array} */ (buffers.get(file.file)).set(data, chunkRange(file.bytes, index).offset);
        this.stats.chunks++;
        this.stats.sources.add(id);
        received += data.byteLength;
        onProgress?.(received, total);
        const left = /** @type {number} */ (missing.get(file.file)) - 1;
        missing.set(file.file, left);
        if (left === 0) {
          const bytes = /** @type {Uint8Array} */ (buffers.get(file.file));
          if ((await sha256Hex(bytes)) !== file.sha256) {
            storeFailure = new ChunkFetchError(`${file.file}: every chunk verified but the whole file's sha256 is not the signed one`);
            return;
          }
          try {
            await store(file, bytes);
          } catch (err) {
            this.log.warn(`${file.file} not stored: ${message(err)}`);
          }
        }
      } finally {
        state.inFlight--;
      }
    };

    for (;;) {
      if (storeFailure !== null) throw storeFailure;
      if (queue.length === 0 && running.size === 0) break;
      const now = this.now();
      let waitUntil = Infinity;
      for (let i = 0; i < queue.length; ) {
        const task = queue[i];
        const holders = states.filter((s) => usable(s, task.file.file));
        if (holders.length === 0) {
          if (running.size > 0) {
            i++; // a request in flight may still fail over; decide once nothing runs
            continue;
          }
          throw new ChunkFetchError(this.#noSource(task, states));
        }
        const ready = holders.filter((s) => s.inFlight < this.perSource && s.retryAt <= now).sort((a, b) => a.inFlight - b.inFlight);
        if (ready.length === 0) {
          for (const s of holders) if (s.retryAt > now) waitUntil = Math.min(waitUntil, s.retryAt);
          i++;
          continue;
        }
        queue.splice(i, 1);
        const job = request(ready[0], task).finally(() => running.delete(job));
        running.add(job);
      }
      if (queue.length === 0 && running.size === 0) continue;
      /** @type {Promise<unknown>[]} */
      const wakers = [...running];
      /** @type {ReturnType<typeof setTimeout> | undefined} */
      let timer;
      if (waitUntil !== Infinity) wakers.push(new Promise((resolve) => (timer = setTimeout(resolve, Math.max(1, waitUntil - now)))));
      if (wakers.length === 0) throw new ChunkFetchError(this.#noSource(queue[0], states));
      await Promise.race(wakers);
      clearTimeout(timer);
    }
    if (storeFailure !== null) throw storeFailure;
    return buffers;
  }

  /**
   * Why chunk `task` has no source left.
   * @param {{file: PublishedFile, index: number}} task
   * @param {SourceState[]} states
   */
  #noSource(task, states) {
    const why = states.map((s) => {
      const id = short(s.source.id);
      if (this.banned(s.source.id) || s.dropped !== null) return `${id}: ${s.dropped ?? 'banned'}`;
      return `${id}: ${s.fileReasons.get(task.file.file) ?? 'does not hold it'}`;
    });
    return (
      `no usable peer holds chunk ${task.index} of ${task.file.file}` +
      (why.length > 0 ? ` (${why.join('; ')})` : ' (no peer seeds this publication)') +
      ': nothing unverified was stored'
    );
  }
}

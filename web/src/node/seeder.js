// @ts-check
/**
 * A browser node's seeding (docs/chunks.md, "The seeder"), the mirror of python_peer/seeding.py: it
 * answers CHUNK requests (`manifest`, `have`, `chunk`) for the one verified publication it holds, and
 * only for the files of it it holds whole and verified. Each chunk is read (`read(file, offset,
 * length)`: the IndexedDB shard cache, web/src/storage/shard_cache.js) and checked against its signed
 * hash again before it is sent, so a rotted copy stops being seeded instead of making this node look
 * like a liar. A requester has at most `MAX_CHUNK_REQUESTS_IN_FLIGHT` requests in flight (`busy`) and
 * `CHUNK_REQUESTS_PER_S` a second (`rate_limited`); all requesters share `uploadBytesPerS`, kept by
 * delaying answers (`busy` past `MAX_PACING_WAIT_MS`). No DOM.
 */

import {
  CHUNK_REQUESTS_PER_S,
  ChunkErrorCode,
  ChunkKind,
  DEFAULT_UPLOAD_BYTES_PER_S,
  MAX_CHUNK_REQUESTS_IN_FLIGHT,
  MAX_MANIFEST_ANSWER_BYTES,
  MAX_SEEDER_REQUESTERS,
  MAX_SEEDER_REQUESTS_IN_FLIGHT,
} from '../protocol/constants.js';
import { WireError, errorFrame } from '../protocol/wire.js';
import { chunkAnswer, chunkRange, haveAnswer, manifestAnswer, parseRequest } from '../runtime/chunk_frames.js';
import { checkChunk } from '../runtime/publication.js';

/** @typedef {import('../protocol/wire.js').Frame} Frame */
/** @typedef {import('../runtime/publication.js').Publication} Publication */

/** An answer is delayed at most this long for the upload rate; beyond it the request is answered `busy`. */
export const MAX_PACING_WAIT_MS = 20_000;

/** A token bucket: `rate` a second, holding at most `burst`. */
class Bucket {
  /** @param {number} rate @param {number} burst @param {() => number} now ms */
  constructor(rate, burst, now) {
    this.rate = rate;
    this.burst = burst;
    this.level = burst;
    this.now = now;
    this.at = now();
  }

  /** Take `amount` (the level may go below zero); the ms until the level is back at zero. */
  take(/** @type {number} */ amount) {
    const now = this.now();
    this.level = Math.min(this.burst, this.level + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    this.level -= amount;
    return Math.max(0, (-this.level / this.rate) * 1000);
  }
}

/**
 * @typedef {object} SeededModel
 * @property {Publication} publication  verified
 * @property {Uint8Array} signed  manifest.sig.json bytes
 * @property {Uint8Array} manifest  the manifest.json bytes it pins
 * @property {Set<string>} files  the files held whole and verified
 * @property {(file: string, offset: number, length: number) => Promise<Uint8Array>} read
 */

/** Answers CHUNK requests for the verified publications it was given, within its bounds. */
export class BrowserSeeder {
  /** @type {Map<string, SeededModel>} */
  models = new Map();
  /** @type {Map<string, Bucket>} */
  #requesters = new Map();
  /** @type {Map<string, number>} */
  #inFlight = new Map();
  #total = 0;

  /**
   * @param {{uploadBytesPerS?: number, requestsPerS?: number, inFlightPerRequester?: number, inFlightTotal?: number,
   *   now?: () => number, sleep?: (ms: number) => Promise<void>, log?: {info(m: string): void, warn(m: string): void}}} [options]
   */
  constructor({
    uploadBytesPerS = DEFAULT_UPLOAD_BYTES_PER_S,
    requestsPerS = CHUNK_REQUESTS_PER_S,
    inFlightPerRequester = MAX_CHUNK_REQUESTS_IN_FLIGHT,
    inFlightTotal = MAX_SEEDER_REQUESTS_IN_FLIGHT,
    now = () => performance.now(),
    sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms)),
    log = console,
  } = {}) {
    for (const [name, value] of Object.entries({ uploadBytesPerS, requestsPerS, inFlightPerRequester, inFlightTotal })) {
      if (!Number.isSafeInteger(value) || value < 1) throw new RangeError(`seeding ${name} must be a positive integer, not ${value}`);
    }
    this.config = { uploadBytesPerS, requestsPerS, inFlightPerRequester, inFlightTotal };
    this.now = now;
    this.sleep = sleep;
    this.log = log;
    this.upload = new Bucket(uploadBytesPerS, uploadBytesPerS, now);
    this.chunksSent = 0;
    this.bytesSent = 0;
  }

  /** Seed `model` (replacing an older publication of the same name). @param {SeededModel} model */
  add(model) {
    this.models.set(model.publication.model, model);
    this.log.info(`seeding ${model.publication.model} (publisher ${model.publication.publisher.slice(0, 12)}, version ${model.publication.version}): ${model.files.size} of ${model.publication.files.length} files`);
  }

  /**
   * The answer to one CHUNK request from `client`: the data, or an ERROR frame that says why not.
   * @param {string} client
   * @param {Frame} frame
   * @returns {Promise<Frame>}
   */
  async handle(client, frame) {
    let request;
    try {
      request = parseRequest(frame);
    } catch (err) {
      if (err instanceof WireError) return errorFrame(frame.session, frame.step, /** @type {any} */ (err).code ?? 'bad_frame', err.message);
      throw err;
    }
    if ((this.#inFlight.get(client) ?? 0) >= this.config.inFlightPerRequester) {
      return errorFrame(frame.session, frame.step, ChunkErrorCode.BUSY, `${this.config.inFlightPerRequester} chunk requests of yours are in flight: wait for them`);
    }
    if (this.#total >= this.config.inFlightTotal) {
      return errorFrame(frame.session, frame.step, ChunkErrorCode.BUSY, 'this seeder is busy: ask another or later');
    }
    if (this.#requester(client).take(1) > 0) {
      return errorFrame(frame.session, frame.step, ChunkErrorCode.RATE_LIMITED, `over ${this.config.requestsPerS} chunk requests a second: slow down`);
    }
    this.#inFlight.set(client, (this.#inFlight.get(client) ?? 0) + 1);
    this.#total++;
    try {
      return await this.#answer(frame, request);
    } finally {
      this.#total--;
      const left = /** @type {number} */ (this.#inFlight.get(client)) - 1;
      if (left > 0) this.#inFlight.set(client, left);
      else this.#inFlight.delete(client);
    }
  }

  /** @param {string} client */
  #requester(client) {
    let bucket = this.#requesters.get(client);
    if (bucket === undefined) {
      bucket = new Bucket(this.config.requestsPerS, this.config.requestsPerS, this.now);
      while (this.#requesters.size >= MAX_SEEDER_REQUESTERS) this.#requesters.delete(/** @type {string} */ (this.#requesters.keys().next().value));
    } else {
      this.#requesters.delete(client); // re-inserted: most recent last
    }
    this.#requesters.set(client, bucket);
    return bucket;
  }

  /**
   * @param {Frame} frame
   * @param {import('../runtime/chunk_frames.js').ChunkRequest} request
   */
  async #answer(frame, request) {
    const notSeeded = (/** @type {string} */ text) => errorFrame(frame.session, frame.step, ChunkErrorCode.NOT_SEEDED, text);
    const model = this.models.get(request.model);
    if (model === undefined) return notSeeded(`this node seeds no verified signed manifest of ${request.model}`);
    const publication = model.publication;
    if (request.kind === ChunkKind.MANIFEST) {
      if (model.signed.byteLength + model.manifest.byteLength > MAX_MANIFEST_ANSWER_BYTES) {
        return notSeeded(`the signed manifest of ${request.model} is over one frame`);
      }
      return manifestAnswer(frame, publication.model, model.signed, model.manifest);
    }
    if (request.kind === ChunkKind.HAVE) {
      return haveAnswer(frame, publication.model, publication.publisher, publication.version, model.files);
    }
    if (request.publisher !== publication.publisher || request.version !== publication.version) {
      return notSeeded(
        `this node seeds version ${publication.version} of ${request.model} by publisher ${publication.publisher.slice(0, 12)}…, ` +
          `not version ${request.version} by ${request.publisher.slice(0, 12)}…`,
      );
    }
    if (!model.files.has(request.file)) return notSeeded(`this node does not seed file ${request.file} of ${request.model}`);
    const item = publication.files.find((f) => f.file === request.file);
    if (item === undefined) return notSeeded(`the publication lists no file ${request.file}`);
    if (request.index >= item.chunks.length) return notSeeded(`file ${request.file} has chunks 0-${item.chunks.length - 1}, not ${request.index}`);
    const { offset, length } = chunkRange(item.bytes, request.index);
    const wait = this.upload.take(length);
    if (wait > MAX_PACING_WAIT_MS) {
      this.upload.level += length; // not sent: given back
      return errorFrame(frame.session, frame.step, ChunkErrorCode.BUSY, `this seeder's upload rate is taken for the next ${Math.round(wait / 1000)} s: retry later or elsewhere`);
    }
    if (wait > 0) await this.sleep(wait);
    let data;
    try {
      data = await model.read(request.file, offset, length);
      await checkChunk(item, request.index, data);
    } catch (err) {
      model.files.delete(request.file);
      this.log.warn(`stopped seeding ${request.file}: ${err instanceof Error ? err.message : err}`);
      return notSeeded(`file ${request.file} is no longer seeded here`);
    }
    this.chunksSent++;
    this.bytesSent += length;
    return chunkAnswer(frame, request.file, request.index, data);
  }
}

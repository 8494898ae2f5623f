// @ts-check
/**
 * Chunks: one message (an encoded frame) cut into data channel messages below the channel's size
 * limit, and joined back within fixed bounds (Python's `chunk_message` and `Reassembler`).
 */

import {
  CHUNK_HEADER_SIZE,
  CHUNK_MAGIC,
  DEFAULT_CHUNK_SIZE,
  MAX_CHUNKS,
  MAX_FRAME_BYTES,
  MAX_MESSAGE_ID,
} from './constants.js';
import { ChunkError, LimitExceededError } from './errors.js';

/** @typedef {import('./errors.js').WireError} WireError */
import { asBytes, show } from './values.js';

const CHUNK_MAGIC_BYTES = Uint8Array.from(CHUNK_MAGIC, (c) => c.charCodeAt(0));

/**
 * Cut one message into data channel messages of at most `chunkSize` bytes each.
 * @param {number} messageId  u32, unique among the sender's messages in flight
 * @param {ArrayBuffer | ArrayBufferView} data
 * @param {number} [chunkSize]
 * @returns {Uint8Array[]}
 */
export function chunkMessage(messageId, data, chunkSize = DEFAULT_CHUNK_SIZE) {
  if (!Number.isInteger(messageId) || messageId < 0 || messageId > MAX_MESSAGE_ID) {
    throw new RangeError(`message id ${messageId} is not in 0..${MAX_MESSAGE_ID}`);
  }
  if (!Number.isInteger(chunkSize) || chunkSize <= CHUNK_HEADER_SIZE) {
    throw new RangeError(`chunk size ${chunkSize} leaves no room after the ${CHUNK_HEADER_SIZE}-byte header`);
  }
  const bytes = asBytes(data, 'a message');
  const payload = chunkSize - CHUNK_HEADER_SIZE;
  const count = Math.max(1, Math.ceil(bytes.byteLength / payload));
  if (count > MAX_CHUNKS) {
    throw new LimitExceededError(
      `message of ${bytes.byteLength} bytes needs ${count} chunks, over ${MAX_CHUNKS}`,
    );
  }
  return Array.from({ length: count }, (_, i) => {
    const part = bytes.subarray(i * payload, (i + 1) * payload);
    const chunk = new Uint8Array(CHUNK_HEADER_SIZE + part.byteLength);
    const view = new DataView(chunk.buffer);
    chunk.set(CHUNK_MAGIC_BYTES, 0);
    view.setUint32(4, messageId, true);
    view.setUint16(8, i, true);
    view.setUint16(10, count, true);
    chunk.set(part, CHUNK_HEADER_SIZE);
    return chunk;
  });
}

/**
 * @typedef {object} Partial
 * @property {number} started
 * @property {number} count
 * @property {Map<number, Uint8Array>} parts
 * @property {number} size
 */

/**
 * Joins chunks back into messages, within fixed bounds; time is passed in, so tests need no clock.
 * Any inconsistency drops that message's partial state and throws a WireError subclass; other
 * messages are untouched. A stuck message holds its room until `expire` drops it.
 */
export class Reassembler {
  /** @type {Map<number, Partial>} */
  #partial = new Map();
  #buffered = 0;

  /**
   * @param {object} [options]
   * @param {number} [options.maxMessageBytes]  the largest message, in bytes
   * @param {number} [options.maxPartial]  how many messages may be partial at once
   * @param {number} [options.maxBufferedBytes]  payload bytes held for all partial messages
   * @param {number} [options.timeoutS]  how long `expire` lets a partial message wait, in seconds
   */
  constructor(options = {}) {
    const { maxMessageBytes = MAX_FRAME_BYTES, maxPartial = 8 } = options;
    const { maxBufferedBytes = 2 * MAX_FRAME_BYTES, timeoutS = 30 } = options;
    this.maxMessageBytes = maxMessageBytes;
    this.maxPartial = maxPartial;
    this.maxBufferedBytes = maxBufferedBytes;
    this.timeoutS = timeoutS;
  }

  /** The number of partial messages held. */
  get size() {
    return this.#partial.size;
  }

  /** The payload bytes held for partial messages. */
  get bufferedBytes() {
    return this.#buffered;
  }

  /** @param {number} messageId */
  #drop(messageId) {
    const partial = this.#partial.get(messageId);
    if (partial !== undefined) {
      this.#partial.delete(messageId);
      this.#buffered -= partial.size;
    }
  }

  /**
   * @param {number} messageId
   * @param {WireError} error
   */
  #refuse(messageId, error) {
    this.#drop(messageId);
    return error;
  }

  /**
   * Take one chunk; return the whole message (a fresh buffer) when this chunk completes it, else null.
   * @param {ArrayBuffer | ArrayBufferView} chunk
   * @param {number} now  seconds, on any clock that `expire` is given too
   * @returns {Uint8Array | null}
   */
  feed(chunk, now) {
    const bytes = asBytes(chunk, 'a chunk');
    if (bytes.byteLength < CHUNK_HEADER_SIZE) {
      throw new ChunkError(
        `chunk of ${bytes.byteLength} bytes is shorter than the ${CHUNK_HEADER_SIZE}-byte header`,
      );
    }
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const mid = view.getUint32(4, true);
    const index = view.getUint16(8, true);
    const count = view.getUint16(10, true);
    const payload = bytes.subarray(CHUNK_HEADER_SIZE);
    if (CHUNK_MAGIC_BYTES.some((b, i) => bytes[i] !== b)) {
      throw new ChunkError(`chunk starts with ${show(Array.from(bytes.subarray(0, 4)))}, not ${CHUNK_MAGIC}`);
    }
    if (count === 0 || index >= count) {
      throw this.#refuse(
        mid,
        new ChunkError(`message ${mid}: chunk index ${index} is outside 0..${count - 1}`),
      );
    }
    if (count > 1 && payload.byteLength === 0) {
      throw this.#refuse(mid, new ChunkError(`message ${mid}: chunk ${index} of ${count} is empty`));
    }
    let partial = this.#partial.get(mid);
    if (partial === undefined) {
      if (count === 1) {
        if (payload.byteLength > this.maxMessageBytes) {
          throw new LimitExceededError(
            `message ${mid} of ${payload.byteLength} bytes is over ${this.maxMessageBytes}`,
          );
        }
        return payload.slice();
      }
      if (this.#partial.size >= this.maxPartial) {
        throw new LimitExceededError(
          `${this.#partial.size} partial messages already; refusing message ${mid}`,
        );
      }
      partial = { started: now, count, parts: new Map(), size: 0 };
      this.#partial.set(mid, partial);
    } else if (count !== partial.count) {
      throw this.#refuse(
        mid,
        new ChunkError(`message ${mid}: chunk says ${count} chunks, earlier ${partial.count}`),
      );
    } else if (partial.parts.has(index)) {
      throw this.#refuse(mid, new ChunkError(`message ${mid}: chunk ${index} arrived twice`));
    }
    if (partial.size + payload.byteLength > this.maxMessageBytes) {
      throw this.#refuse(mid, new LimitExceededError(`message ${mid} is over ${this.maxMessageBytes} bytes`));
    }
    if (this.#buffered + payload.byteLength > this.maxBufferedBytes) {
      throw this.#refuse(
        mid,
        new LimitExceededError(`reassembly buffer is over ${this.maxBufferedBytes} bytes`),
      );
    }
    partial.parts.set(index, payload.slice());
    partial.size += payload.byteLength;
    this.#buffered += payload.byteLength;
    if (partial.parts.size < count) return null;
    this.#drop(mid);
    const message = new Uint8Array(partial.size);
    let at = 0;
    for (let i = 0; i < count; i++) {
      const part = /** @type {Uint8Array} */ (partial.parts.get(i));
      message.set(part, at);
      at += part.byteLength;
    }
    return message;
  }

  /**
   * Drop partial messages whose first chunk came more than `timeoutS` before `now`.
   * @param {number} now
   * @returns {number[]} the message ids dropped
   */
  expire(now) {
    const stale = [...this.#partial].filter(([, p]) => now - p.started > this.timeoutS).map(([mid]) => mid);
    for (const mid of stale) this.#drop(mid);
    return stale;
  }
}

// @ts-check
/**
 * IndexedDB as promises, for the stores of `./db.js` and `./shard_cache.js`: `done(request)`,
 * `inTransaction(db, stores, mode, what, work)` (one transaction, committed whole or not at all) and the
 * one error type of this folder, `StorageError`, whose `code` names what a caller can act on (`quota`:
 * the disk is full; `blocked`, `locked`, `conflict`, `storage`). No DOM: it runs in a page or a Worker.
 */

import { CoreError } from '../protocol/wire.js';

/** IndexedDB failed; `code` is `quota` (the browser's storage is full), `blocked`, `locked`, `conflict` or `storage`. */
export class StorageError extends CoreError {
  /**
   * @param {string} message
   * @param {{code?: string, cause?: unknown}} [options]
   */
  constructor(message, { code = 'storage', cause } = {}) {
    super(message, { cause });
    /** @type {string} */
    this.code = code;
  }
}

/**
 * A StorageError for what IndexedDB reported, naming a full disk plainly.
 * @param {string} what
 * @param {unknown} error
 */
export function storageError(what, error) {
  const name = error instanceof DOMException ? error.name : '';
  if (name === 'QuotaExceededError') {
    return new StorageError(
      `${what}: the browser's storage for this site is full (quota exceeded); free space or allow more storage`,
      { code: 'quota', cause: error },
    );
  }
  const message = error instanceof Error ? error.message : String(error);
  return new StorageError(`${what}: ${message || name || 'IndexedDB failed'}`, { cause: error });
}

/**
 * @template T
 * @param {IDBRequest<T>} request
 * @returns {Promise<T>}
 */
export function done(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

/**
 * Resolve when `tx` commits; reject with its error (or an abort).
 * @param {IDBTransaction} tx
 * @returns {Promise<void>}
 */
function committed(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error ?? new DOMException('transaction aborted', 'AbortError'));
  });
}

/**
 * Run `work` in one transaction over `stores` and wait for it to commit (or fail whole).
 * @template T
 * @param {IDBDatabase} db
 * @param {string[]} stores
 * @param {IDBTransactionMode} mode
 * @param {string} what for error messages
 * @param {(tx: IDBTransaction) => Promise<T> | T} work
 * @returns {Promise<T>}
 */
export async function inTransaction(db, stores, mode, what, work) {
  /** @type {IDBTransaction} */
  let tx;
  try {
    tx = db.transaction(stores, mode, mode === 'readwrite' ? { durability: 'strict' } : undefined);
  } catch (error) {
    throw storageError(what, error);
  }
  const finished = committed(tx);
  try {
    const result = await work(tx);
    await finished;
    return result;
  } catch (error) {
    try {
      tx.abort();
    } catch {
      // already finished or aborted
    }
    await finished.catch(() => {});
    if (error instanceof StorageError) throw error;
    // A request of an aborted transaction only says "The transaction was aborted": the reason (a
    // value too large, a full disk) is the transaction's own error, when it has one.
    const aborted = error instanceof DOMException && error.name === 'AbortError';
    throw storageError(what, aborted && tx.error ? tx.error : error);
  }
}

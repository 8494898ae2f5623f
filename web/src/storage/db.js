// @ts-check
/**
 * The browser node's storage: one IndexedDB database (`ai4all`) holding the identity, the ledger,
 * cached shards and small settings. No DOM: it runs in a page or a Worker.
 *
 * Files of this folder: `db.js` (this one: the database and its stores, the identity, settings, the
 * ledger's rows, the one-node lock), `shard_cache.js` (verified shards by sha256, `fetchShardCached`),
 * `idb.js` (IndexedDB as promises, and `StorageError`). Importers take every name from here.
 *
 * Object stores (version 1):
 *
 * | store          | key                 | value |
 * |----------------|---------------------|-------|
 * | `identity`     | `'self'`            | the Ed25519 key, `Identity.exportIdentity('jwk')` |
 * | `entries`      | `[author, seq]`     | `{author, seq, hash, raw}`: a ledger chain entry, `raw` its canonical JSON |
 * | `evidence`     | `hash`              | `{author, seq, hash, raw}`: fork evidence (index `author`) |
 * | `shard_meta`   | `sha256`            | `{sha256, size, meta, storedMs}`, and `pieces` for a shard over 16 MiB |
 * | `shard_bytes`  | `sha256`            | the shard's bytes (`Uint8Array`), when they fit one piece |
 * | `shard_bytes`  | `[sha256, i]`       | piece `i` (16 MiB) of a bigger shard's bytes (./shard_cache.js) |
 * | `settings`     | any string          | any structured-cloneable value |
 *
 * Shard bytes and their metadata live in two stores so that listing the cache never reads the bytes.
 * A cached shard is re-hashed before use (`fetchShardCached`): a corrupt entry is deleted and the shard
 * downloaded again. A full disk (`QuotaExceededError`) raises `StorageError` with code `quota`; the
 * shard cache swallows it with a warning, since serving works without a cache.
 */

import { Identity } from '../identity/identity.js';
import { StorageError, done, inTransaction, storageError } from './idb.js';

export { StorageError } from './idb.js';
export { SHARD_PIECE_BYTES, ShardCache, fetchShardCached } from './shard_cache.js';

export const DB_NAME = 'ai4all';
export const DB_VERSION = 1;
const IDENTITY_KEY = 'self';

/**
 * Open (or create) the database; `name` is overridable so tests can use a fresh one.
 * @param {string} [name]
 * @returns {Promise<IDBDatabase>}
 */
export function openDatabase(name = DB_NAME) {
  return new Promise((resolve, reject) => {
    /** @type {IDBOpenDBRequest} */
    let request;
    try {
      request = indexedDB.open(name, DB_VERSION);
    } catch (error) {
      reject(storageError(`cannot open the ${name} database`, error));
      return;
    }
    request.onupgradeneeded = () => {
      const db = request.result;
      const have = new Set(Array.from(db.objectStoreNames));
      if (!have.has('identity')) db.createObjectStore('identity');
      if (!have.has('entries')) db.createObjectStore('entries', { keyPath: ['author', 'seq'] });
      if (!have.has('evidence')) {
        db.createObjectStore('evidence', { keyPath: 'hash' }).createIndex('author', 'author', { unique: false });
      }
      if (!have.has('shard_meta')) db.createObjectStore('shard_meta', { keyPath: 'sha256' });
      if (!have.has('shard_bytes')) db.createObjectStore('shard_bytes');
      if (!have.has('settings')) db.createObjectStore('settings');
    };
    request.onblocked = () =>
      reject(new StorageError(`the ${name} database is held open by another tab of an older version`, { code: 'blocked' }));
    request.onerror = () => reject(storageError(`cannot open the ${name} database`, request.error));
    request.onsuccess = () => {
      const db = request.result;
      db.onversionchange = () => db.close(); // let a newer version of the page upgrade
      resolve(db);
    };
  });
}

/**
 * Delete a database (tests, "forget me" in settings).
 * @param {string} name
 * @returns {Promise<void>}
 */
export function deleteDatabase(name) {
  return new Promise((resolve, reject) => {
    const request = indexedDB.deleteDatabase(name);
    request.onsuccess = () => resolve();
    request.onerror = () => reject(storageError(`cannot delete the ${name} database`, request.error));
    request.onblocked = () => reject(new StorageError(`the ${name} database is still open elsewhere`, { code: 'blocked' }));
  });
}

// --- identity -----------------------------------------------------------------------------------------

/**
 * This browser's identity: the stored key, or a new one stored at once. Two tabs racing to create it
 * end up with the same key (the first write wins; the other reads it back).
 * @param {IDBDatabase} db
 * @returns {Promise<Identity>}
 */
export async function loadOrCreateIdentity(db) {
  const stored = await inTransaction(db, ['identity'], 'readonly', 'cannot read the identity', (tx) =>
    done(tx.objectStore('identity').get(IDENTITY_KEY)),
  );
  if (stored !== undefined) return Identity.importIdentity(stored);
  const fresh = await Identity.generate();
  const exported = await fresh.exportIdentity('jwk');
  const winner = await inTransaction(db, ['identity'], 'readwrite', 'cannot store the identity', async (tx) => {
    const store = tx.objectStore('identity');
    const again = await done(store.get(IDENTITY_KEY));
    if (again !== undefined) return again;
    await done(store.add(exported, IDENTITY_KEY));
    return exported;
  });
  return winner === exported ? fresh : Identity.importIdentity(winner);
}

// --- settings -----------------------------------------------------------------------------------------

/**
 * @param {IDBDatabase} db
 * @param {string} key
 * @returns {Promise<any>} the value, or undefined
 */
export function getSetting(db, key) {
  return inTransaction(db, ['settings'], 'readonly', `cannot read setting ${key}`, (tx) =>
    done(tx.objectStore('settings').get(key)),
  );
}

/**
 * @param {IDBDatabase} db
 * @param {string} key
 * @param {any} value structured-cloneable; `undefined` deletes the setting
 */
export async function setSetting(db, key, value) {
  await inTransaction(db, ['settings'], 'readwrite', `cannot store setting ${key}`, (tx) =>
    done(value === undefined ? tx.objectStore('settings').delete(key) : tx.objectStore('settings').put(value, key)),
  );
}

// --- the ledger ---------------------------------------------------------------------------------------

/**
 * Everything the ledger stored: chain entries by author then seq, and fork evidence, as canonical JSON.
 * @param {IDBDatabase} db
 * @returns {Promise<{entries: string[], evidence: string[]}>}
 */
export function loadLedger(db) {
  return inTransaction(db, ['entries', 'evidence'], 'readonly', 'cannot read the ledger', async (tx) => {
    const [entries, evidence] = await Promise.all([
      done(tx.objectStore('entries').getAll()),
      done(tx.objectStore('evidence').getAll()),
    ]);
    return { entries: entries.map((row) => row.raw), evidence: evidence.map((row) => row.raw) };
  });
}

/**
 * A change the ledger made, as `python_peer/core/browser_ledger.py` writes its journal:
 * `['put', author, seq, hash, raw]`, `['drop', author, fromSeq]` or
 * `['evidence', author, seq, [[hash, raw], ...]]`.
 * @typedef {['put', string, number, string, string] | ['drop', string, number] |
 *   ['evidence', string, number, [string, string][]]} JournalChange
 */

/**
 * The chain entries of `author` after seq `after`, in order (what another tab of this browser wrote).
 * @param {IDBDatabase} db
 * @param {string} author
 * @param {number} after
 * @returns {Promise<string[]>}
 */
export function loadEntriesAfter(db, author, after) {
  return inTransaction(db, ['entries'], 'readonly', 'cannot read the ledger', async (tx) => {
    const range = IDBKeyRange.bound([author, after + 1], [author, Number.MAX_SAFE_INTEGER]);
    const rows = await done(tx.objectStore('entries').getAll(range));
    return rows.map((row) => row.raw);
  });
}

/**
 * Apply the ledger's changes in one transaction, in order: all of them are stored, or none. A row of
 * `protect` (the browser's own identity) is never replaced by another entry: if another tab wrote that
 * seq first, the whole write fails (StorageError, code `conflict`) rather than fork the identity's log.
 * @param {IDBDatabase} db
 * @param {JournalChange[]} journal
 * @param {{protect?: string | null}} [options]
 */
export async function writeJournal(db, journal, { protect = null } = {}) {
  if (journal.length === 0) return;
  await inTransaction(db, ['entries', 'evidence'], 'readwrite', 'cannot store ledger entries', async (tx) => {
    const entries = tx.objectStore('entries');
    const evidence = tx.objectStore('evidence');
    /** @type {Promise<unknown>[]} */
    const pending = [];
    for (const change of journal) {
      if (change[0] === 'put') {
        const [, author, seq, hash, raw] = change;
        if (author === protect) {
          const held = await done(entries.get([author, seq]));
          if (held !== undefined && held.hash !== hash) {
            throw new StorageError(`entry ${seq} of this identity was already written (by another tab?) with other content`, {
              code: 'conflict',
            });
          }
        }
        pending.push(done(entries.put({ author, seq, hash, raw })));
      } else if (change[0] === 'drop') {
        const [, author, from] = change;
        pending.push(done(entries.delete(IDBKeyRange.bound([author, from], [author, Number.MAX_SAFE_INTEGER]))));
      } else if (change[0] === 'evidence') {
        const [, author, seq, pairs] = change;
        const old = await done(evidence.index('author').getAllKeys(IDBKeyRange.only(author)));
        for (const key of old) pending.push(done(evidence.delete(key)));
        for (const [hash, raw] of pairs) pending.push(done(evidence.put({ author, seq, hash, raw })));
      } else {
        throw new StorageError(`unknown ledger change ${JSON.stringify(change).slice(0, 60)}`);
      }
    }
    await Promise.all(pending);
  });
}

/**
 * Remove rows that did not load again (dropped at replay): by their canonical JSON.
 * @param {IDBDatabase} db
 * @param {string[]} raws
 */
export async function deleteLedgerRows(db, raws) {
  if (raws.length === 0) return;
  const unwanted = new Set(raws);
  await inTransaction(db, ['entries', 'evidence'], 'readwrite', 'cannot clean the ledger', async (tx) => {
    for (const name of ['entries', 'evidence']) {
      const store = tx.objectStore(name);
      const rows = await done(store.getAll());
      const keys = await done(store.getAllKeys());
      const doomed = keys.filter((_, i) => unwanted.has(rows[i].raw));
      await Promise.all(doomed.map((key) => done(store.delete(key))));
    }
  });
}

// --- one node per identity ----------------------------------------------------------------------------

/**
 * Hold the Web Lock `name` until the returned function is called; StorageError (code `locked`) if
 * another tab or worker holds it. Without the Web Locks API (old browsers) nothing is locked. The
 * contribute page's node and the chat page take `ai4all-node/<database>`: signaling binds a peer id to
 * one connection, so one identity must be announced from one place.
 * @param {string} name
 * @returns {Promise<() => void>}
 */
export async function acquireNodeLock(name) {
  const locks = globalThis.navigator?.locks;
  if (locks === undefined) return () => {};
  /** @type {() => void} */
  let release = () => {};
  const held = new Promise((resolve) => {
    release = () => resolve(undefined);
  });
  const granted = await new Promise((resolve, reject) => {
    locks
      .request(name, { ifAvailable: true }, (lock) => {
        resolve(lock !== null);
        return lock === null ? undefined : held;
      })
      .catch(reject);
  });
  if (!granted) {
    throw new StorageError(
      'another tab of this browser already contributes as this node or chats as it (one identity is announced once): use that one, or close it first',
      { code: 'locked' },
    );
  }
  return release;
}

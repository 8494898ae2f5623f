// @ts-check
/**
 * The ledger in the browser: `python_peer/core` (entries, balances, gossip, `memory_store.py`) run
 * under Pyodide, signatures made and checked with WebCrypto Ed25519, every entry kept in IndexedDB.
 * Mirrors `python_peer/ledger_service.py`; `docs/ledger.md` ("In the browser") explains the design.
 *
 * - Python under Pyodide cannot wait on a promise, so each call that takes entries asks Python first
 *   which signatures their acceptance needs (`claims`), checks them here with WebCrypto, and hands
 *   Python the good ones; Python's `verify` accepts exactly those. Signing works the other way round:
 *   Python dry-runs the operation to learn the bytes to sign, the identity signs them here, and the
 *   operation runs again with the signatures.
 * - Every write comes back as a journal of changes. It is written to IndexedDB in one transaction
 *   before Python keeps the write (`commit`), or forgotten (`rollback`) if IndexedDB fails: an own
 *   entry is on disk before it is returned or gossiped, and memory never holds what the disk lacks.
 * - `open` replays IndexedDB into the store, re-checking every signature in bulk, and claims the
 *   starter grant when the own log is empty (its proof of work mined here, in slices that yield to the
 *   event loop: `@noble/hashes` SHA-256 from the prefix's midstate; Python checks it again when
 *   storing the grant).
 * - Every operation runs through one queue, so each is atomic with respect to the others. Tabs and
 *   workers of one browser share the identity and the database: own entries are signed under a Web
 *   Lock after taking in what another tab wrote, and an own row is never replaced on disk.
 *
 * - `codec` builds and parses the ledger messages of a session link (`ledger_exchange.py`, for
 *   `ClientExchange` of ./client_exchange.js and `ServerExchange` of ./server_exchange.js) in the same Pyodide.
 * - The module is split: Pyodide loading in ./python_core.js, the grant's proof of work in ./pow.js, the
 *   errors in ./errors.js (all re-exported here).
 *
 * Amounts are integer units (1 credit = 1000 units); entries and receipts are plain JSON objects as
 * Python's `Entry.to_dict()` and `Receipt.to_dict()`.
 */

import { verify } from '../identity/identity.js';
import { LedgerError, PaymentRequiredError } from './errors.js';
import { ExchangeCodec } from './exchange_codec.js';
import { CORE_FILES, loadCore } from './python_core.js';
import { GRANT_POW_CONTEXT } from '../protocol/constants.js';
import { mineGrant, mineGrantSlice, powBits } from './pow.js';
import { deleteLedgerRows, loadEntriesAfter, loadLedger, writeJournal } from '../storage/db.js';
import { PUSH_ENTRIES, SIGNALING_GOSSIP_BYTES } from '../protocol/constants.js';

export { CORE_FILES, GRANT_POW_CONTEXT, LedgerError, PaymentRequiredError, loadCore, mineGrant, mineGrantSlice, powBits };

export const DEFAULT_POW_BITS = 22;
/** Gossip budgets: through a signaling node (a signal payload holds 32 KiB) and over a data channel. */
const MAX_GOSSIP_MESSAGE_BYTES = 64 * 1024 - 1024;
const VERIFY_BATCH = 256;
const UTF8 = new TextEncoder();

// --- signatures -----------------------------------------------------------------------------------------

/** @typedef {[string, string, string]} Claim [peer id, signed message (ASCII text), signature hex] */

/**
 * The claims whose signatures verify, checked with WebCrypto in batches.
 * @param {Claim[]} claims
 * @returns {Promise<Claim[]>}
 */
export async function verifyClaims(claims) {
  /** @type {Claim[]} */
  const good = [];
  for (let i = 0; i < claims.length; i += VERIFY_BATCH) {
    const batch = claims.slice(i, i + VERIFY_BATCH);
    const results = await Promise.all(
      batch.map(([peer, message, signature]) =>
        verify(peer, UTF8.encode(message), signature).then(
          () => true,
          () => false,
        ),
      ),
    );
    batch.forEach((claim, j) => results[j] && good.push(claim));
  }
  return good;
}

/** @param {string | Uint8Array} session 16 bytes, or their 32 hex digits */
function sessionHex(session) {
  if (typeof session === 'string') return session;
  if (session instanceof Uint8Array) return Array.from(session, (b) => b.toString(16).padStart(2, '0')).join('');
  throw new LedgerError('a session id is 16 bytes or 32 hex digits');
}

// --- the ledger -----------------------------------------------------------------------------------------

/**
 * @typedef {object} OpenOptions
 * @property {IDBDatabase} db from `openDatabase` (web/src/storage/db.js)
 * @property {import('../identity/identity.js').Identity} identity
 * @property {number} [powBits] the network's grant proof of work (page config `ledger.pow_bits`)
 * @property {string | URL} coreUrl where `python_peer/core/*.py` are served (page config `python_core`)
 * @property {boolean} [claimGrant] mine and append the starter grant when the own log is empty
 * @property {Pick<Console, 'info' | 'warn'>} [log]
 */

/** @typedef {{balance: number, granted: number, earned: number, bonuses: number, spent: number, forked_at: number | null}} Account */
/** @typedef {Record<string, any>} Entry an entry as `Entry.to_dict()` */
/** @typedef {Record<string, any>} Receipt a receipt as `Receipt.to_dict()` */
/** @typedef {Record<string, any>} GossipMessage */

/** One browser node's ledger. Open with `BrowserLedger.open`. */
export class BrowserLedger {
  /**
   * @param {any} module the Python module `browser_ledger`
   * @param {any} core its `BrowserLedgerCore` (a PyProxy)
   * @param {IDBDatabase} db
   * @param {import('../identity/identity.js').Identity} identity
   * @param {Pick<Console, 'info' | 'warn'>} log
   */
  constructor(module, core, db, identity, log) {
    this.module = module;
    this.core = core;
    this.db = db;
    this.identity = identity;
    /** the console-like sink of warnings (named so as not to hide the `log` method) */
    this.logger = log;
    /** @type {Promise<unknown>} */
    this.queue = Promise.resolve();
    this.closed = false;
    this.powBits = DEFAULT_POW_BITS;
    /** @type {ExchangeCodec | undefined} the session link's ledger messages, built and parsed by the core */
    this.codec = undefined;
    /** @type {{loadMs: number, replayMs: number, grantMs: number, replayed: number}} */
    this.timings = { loadMs: 0, replayMs: 0, grantMs: 0, replayed: 0 };
  }

  /**
   * Start Pyodide, replay IndexedDB into the store, and claim the starter grant if the own log is empty.
   * @param {OpenOptions} options
   * @returns {Promise<BrowserLedger>}
   */
  static async open({ db, identity, powBits = DEFAULT_POW_BITS, coreUrl, claimGrant = true, log = console }) {
    if (!Number.isInteger(powBits) || powBits < 0 || powBits > 64) {
      throw new LedgerError(`powBits = ${powBits} is not a number of bits in 0..64`);
    }
    const t0 = performance.now();
    const module = await loadCore(coreUrl);
    const core = module.BrowserLedgerCore(identity.peerId, powBits);
    const ledger = new BrowserLedger(module, core, db, identity, log);
    ledger.powBits = powBits;
    ledger.codec = await ExchangeCodec.load(coreUrl);
    ledger.timings.loadMs = performance.now() - t0;
    try {
      await ledger.run(async () => {
        const t1 = performance.now();
        await ledger.replay();
        ledger.timings.replayMs = performance.now() - t1;
        if (claimGrant && ledger.call('own_entries', { limit: 1 }).length === 0) {
          const t2 = performance.now();
          log.info(`claiming the starter grant (proof of work, ${powBits} bits)`);
          const nonce = await ledger.mine();
          try {
            await ledger.sign('grant', { nonce });
          } catch (error) {
            // another tab of this browser claimed it meanwhile (`sign` caught up with its entries first)
            if (!(error instanceof LedgerError && error.code === 'grant_claimed')) throw error;
          }
          ledger.timings.grantMs = performance.now() - t2;
        }
      });
    } catch (error) {
      core.destroy();
      throw error;
    }
    return ledger;
  }

  get peerId() {
    return this.identity.peerId;
  }

  // --- plumbing ---------------------------------------------------------------------------------------

  /**
   * Run `work` after every operation queued before it; nothing else runs in between.
   * @template T
   * @param {() => Promise<T>} work
   * @returns {Promise<T>}
   */
  run(work) {
    const next = this.queue.then(() => {
      if (this.closed) throw new LedgerError('the ledger is closed', { code: 'closed' });
      return work();
    });
    this.queue = next.catch(() => {});
    return next;
  }

  /**
   * Call the Python core synchronously; its errors become LedgerError / PaymentRequiredError.
   * @param {string} method
   * @param {Record<string, any>} [args]
   * @returns {any}
   */
  call(method, args = {}) {
    const out = JSON.parse(this.module.call_on(this.core, method, JSON.stringify(args)));
    if (out.error) {
      const { code, message } = out.error;
      if (code === 'payment_required') throw new PaymentRequiredError(message);
      throw new LedgerError(message, { code });
    }
    return out.ok;
  }

  /**
   * Write a held write's journal to IndexedDB, then let Python keep it (or forget it if the disk failed).
   * @param {{result: any, journal: any[]}} held
   */
  async persist(held) {
    if (held.journal.length === 0) return held.result;
    try {
      await writeJournal(this.db, held.journal, { protect: this.peerId });
    } catch (error) {
      this.call('rollback');
      const message = error instanceof Error ? error.message : String(error);
      throw new LedgerError(`ledger not changed: ${message}`, { code: 'store', cause: error });
    }
    this.call('commit');
    return held.result;
  }

  /**
   * Check the signatures `kind` of `payload` needs; the good ones, for Python.
   * @param {string} kind
   * @param {unknown} payload
   */
  async checked(kind, payload) {
    return verifyClaims(this.call('claims', { kind, payload }));
  }

  /**
   * An operation that signs (grant, receipt, fork_proofs): dry run, sign here, run again, persist.
   * @param {string} op
   * @param {Record<string, any>} args
   * @param {Claim[]} [verified] signatures of others the operation needs, already checked
   * @returns {Promise<Entry[]>} the new own entries
   */
  async sign(op, args, verified = []) {
    return this.ownLock(async () => {
      await this.catchUp();
      return this.signHeld(op, args, verified);
    });
  }

  /**
   * Run `work` holding this identity's write lock, shared by every tab and worker of this browser
   * (Web Locks), so two of them never sign the same seq; without Web Locks, just run it.
   * @template T
   * @param {() => Promise<T>} work
   * @returns {Promise<T>}
   */
  ownLock(work) {
    const locks = globalThis.navigator?.locks;
    if (locks === undefined) return work();
    return /** @type {Promise<T>} */ (locks.request(`ai4all-ledger:${this.db.name}:${this.peerId}`, { mode: 'exclusive' }, work));
  }

  /**
   * Take in the own entries another tab or worker of this browser wrote since this one last looked
   * (before signing, and before the reads that show this node's own log or balance). A read goes on
   * with this tab's copy when IndexedDB cannot be read; a write does not.
   * @param {{reading?: boolean}} [options]
   */
  async catchUp({ reading = false } = {}) {
    /** @type {string[]} */
    let newer;
    try {
      newer = await loadEntriesAfter(this.db, this.peerId, this.call('own_head'));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (!reading) throw new LedgerError(`ledger not changed: ${message}`, { code: 'store', cause: error });
      this.logger.warn(`ledger: showing this tab's copy, the stored log is unreadable: ${message}`);
      return;
    }
    if (newer.length === 0) return;
    const verified = await this.checked('raw', newer);
    await this.persist(this.call('catch_up', { raws: newer, verified }));
  }

  /**
   * @param {string} op
   * @param {Record<string, any>} args
   * @param {Claim[]} verified
   * @returns {Promise<Entry[]>}
   */
  async signHeld(op, args, verified) {
    const prepared = this.call('prepare', { op, args, verified });
    /** @type {string[]} */
    const messages = prepared.messages;
    const signatures = await Promise.all(messages.map((m) => this.identity.sign(UTF8.encode(m))));
    /** @type {Claim[]} */
    const own = messages.map((m, i) => [this.peerId, m, signatures[i]]);
    const checked = await verifyClaims(own); // never keep an own entry whose signature would not verify
    if (checked.length !== own.length) {
      throw new LedgerError('this identity made a signature that does not verify', { code: 'bad_signature' });
    }
    const held = this.call('perform', {
      op,
      args: { ...args, now: prepared.now },
      messages,
      signatures,
      verified: [...verified, ...checked],
    });
    return this.persist(held);
  }

  async replay() {
    const { entries, evidence } = await loadLedger(this.db);
    const verified = await verifyClaims(this.call('claims', { kind: 'raw', payload: [...entries, ...evidence] }));
    const loaded = this.call('load', { entries, evidence, verified });
    this.timings.replayed = loaded.entries;
    if (loaded.dropped.length > 0) {
      for (const [hash, code, reason] of loaded.dropped.slice(0, 8)) {
        this.logger.warn(`ledger: stored entry ${String(hash ?? '?').slice(0, 12)} dropped at load: ${code}: ${reason}`);
      }
      await deleteLedgerRows(this.db, loaded.dropped.map((/** @type {any[]} */ d) => d[3]));
    }
  }

  /** The grant's nonce, mined here (a SHA-256 midstate loop); Python checks the proof again when storing it. */
  mine() {
    return mineGrant(this.peerId, this.powBits);
  }

  // --- balances ---------------------------------------------------------------------------------------

  /** @param {string} [peerId] */
  balance(peerId = this.peerId) {
    return this.run(async () => {
      await this.catchUp({ reading: true });
      return /** @type {number} */ (this.call('balance', { peer_id: peerId }));
    });
  }

  /**
   * @param {string} [peerId]
   * @returns {Promise<Account>}
   */
  account(peerId = this.peerId) {
    return this.run(async () => {
      await this.catchUp({ reading: true });
      return this.call('account', { peer_id: peerId });
    });
  }

  /** @returns {Promise<Record<string, number>>} every known peer's balance */
  balances() {
    return this.run(async () => this.call('balances'));
  }

  /**
   * `peerId`'s reputation from this ledger's evidence (`core/reputation.py`); `refusal`: why it is refused sessions, or null.
   * @param {string} peerId
   * @returns {Promise<{level: 'good' | 'suspect' | 'excluded', refusal: string | null, authors: string[], sessions: [string, string][]}>}
   */
  reputation(peerId) {
    return this.run(async () => this.call('reputation', { peer_id: peerId }));
  }

  /** @returns {Promise<Record<string, 'suspect' | 'excluded'>>} every peer with evidence against it */
  reputations() {
    return this.run(async () => this.call('reputations'));
  }

  /**
   * Throw PaymentRequiredError unless `client`'s balance covers `tokens` through `blocks` blocks.
   * @param {string} client
   * @param {number} blocks
   * @param {number} tokens
   * @param {number} [outstanding] units already promised to open sessions
   * @returns {Promise<{client: string, balance: number, price: number, standing: number}>}
   */
  requirePayment(client, blocks, tokens, outstanding = 0) {
    return this.run(async () => this.call('require_payment', { client, blocks, tokens, outstanding }));
  }

  // --- entries ----------------------------------------------------------------------------------------

  /**
   * A span server's check at OPEN (`holds.admit_hold`): `client`'s hold `hold` (an entry hash) is held
   * here, pays for exactly this session on this node and covers its price, and all the client's open
   * holds fit what it can spend. Throws PaymentRequiredError naming the rule that failed.
   * @param {string} client
   * @param {unknown} hold
   * @param {{session: string | Uint8Array, model: string, start: number, end: number, tokens: number}} terms
   * @returns {Promise<{price: number, hold_expires: number}>}
   */
  requireHold(client, hold, { session, model, start, end, tokens }) {
    return this.run(async () =>
      this.call('require_hold', { client, hold, server: this.peerId, session: sessionHex(session), model, start, end, tokens }),
    );
  }

  /**
   * The client's side before OPEN: append a hold of the undiscounted price of `tokens` through
   * `[start, end)` for `session` on `server` (PaymentRequiredError when this node's open holds and it
   * would exceed what it can spend); resolves to the hold entry's hash, which OPEN names.
   * @param {{server: string, session: string | Uint8Array, model: string, start: number, end: number, tokens: number}} terms
   * @returns {Promise<string>}
   */
  hold({ server, session, model, start, end, tokens }) {
    return this.run(async () => {
      const terms = { server, session: sessionHex(session), model, start, end, tokens };
      const [entry] = await this.sign('hold', { terms });
      return this.call('entry_hash', { entry });
    });
  }

  /**
   * Append the `evidence` a spot check settled (web/src/client/spot_check.js) to the own log, checked
   * as every node will (`core/evidence.py`); gossiped like any entry. LedgerError (bad_evidence, bad_signature).
   * @param {{kind: 'evidence', liar: unknown, honest: unknown[]}} evidence
   * @returns {Promise<Entry>} the new entry
   */
  appendEvidence(evidence) {
    return this.run(async () => {
      const verified = await verifyClaims(this.call('evidence_claims', { evidence }));
      const [entry] = await this.sign('append', { bodies: [evidence] }, verified);
      return entry;
    });
  }

  /**
   * The first own entry (the grant) and the latest `limit - 1`: what a client pushes to a peer.
   * @param {number} [limit]
   * @returns {Promise<Entry[]>}
   */
  ownEntries(limit = PUSH_ENTRIES) {
    return this.run(async () => {
      await this.catchUp({ reading: true });
      return this.call('own_entries', { limit });
    });
  }

  /**
   * Store the valid entries a client pushed; invalid ones are skipped. LedgerError if `entries` is not
   * a list of at most PUSH_ENTRIES, or (`rate_limited`) over the gossip entry budget of `sender`, the
   * neighbour that pushed them, before any is checked (the core's `admit_push`).
   * @param {unknown} entries @param {string} [sender]
   * @returns {Promise<number>} how many were new
   */
  async acceptEntries(entries, sender) {
    return (await this.offerEntries(entries, sender)).stored;
  }

  /**
   * `acceptEntries` with the reasons: `refused` lists [hash or null, code, reason] per refused entry.
   * @param {unknown} entries @param {string} [sender]
   * @returns {Promise<{stored: number, refused: [string | null, string, string][]}>}
   */
  offerEntries(entries, sender) {
    return this.run(async () => {
      if (!Array.isArray(entries) || entries.length > PUSH_ENTRIES) throw new LedgerError(`a push carries a list of at most ${PUSH_ENTRIES} entries`);
      if (sender !== undefined) this.call('admit_push', { sender, count: entries.length });
      const verified = await this.checked('push', entries);
      return this.persist(this.call('accept_entries', { entries, verified }));
    });
  }

  /**
   * `peerId`'s latest entries, newest first.
   * @param {string} [peerId]
   * @param {number} [limit]
   * @returns {Promise<Entry[]>}
   */
  log(peerId = this.peerId, limit = 50) {
    return this.run(async () => {
      await this.catchUp({ reading: true });
      return this.call('log', { peer_id: peerId, limit });
    });
  }

  /** @returns {Promise<{entries: number, authors: number, peerId: string, balance: number, forks: number}>} */
  stats() {
    return this.run(async () => {
      await this.catchUp({ reading: true });
      return this.call('stats');
    });
  }

  /** @returns {Promise<Record<string, [number, string]>>} author -> [seq, hash] of each chain's last entry */
  heads() {
    return this.run(async () => this.call('heads'));
  }

  /** @returns {Promise<Record<string, number>>} author -> the seq at which it forked */
  forks() {
    return this.run(async () => this.call('forks'));
  }

  // --- receipts ---------------------------------------------------------------------------------------

  /**
   * The server's side at CLOSE: the receipt to propose, signed by this node.
   * @param {{session: string | Uint8Array, model: string, start: number, end: number, tokens: number, client: string}} terms
   * @returns {Promise<{receipt: Receipt, serverSig: string}>}
   */
  serverReceipt({ session, model, start, end, tokens, client }) {
    return this.run(async () => {
      const proposed = this.call('server_receipt', { session: sessionHex(session), model, start, end, tokens, client });
      return { receipt: proposed.receipt, serverSig: await this.identity.sign(UTF8.encode(proposed.message)) };
    });
  }

  /**
   * The server's side when the client returns the receipt co-signed: it enters this node's log.
   * @param {Receipt} receipt
   * @param {string} clientSig
   * @param {string} serverSig
   * @returns {Promise<Entry>} the new own entry
   */
  recordReceipt(receipt, clientSig, serverSig) {
    return this.run(async () => {
      const body = { kind: 'receipt', receipt, client_sig: clientSig, server_sig: serverSig };
      const verified = await this.checked('receipt', body);
      const [entry] = await this.sign('receipt', { body }, verified);
      return entry;
    });
  }

  /**
   * The client's side: check the proposed receipt against what this node sent, sign it, keep it.
   * @param {Receipt} receipt
   * @param {string} serverSig
   * @param {{server: string, session: string | Uint8Array, model: string, start: number, end: number, tokens: number}} terms
   * @returns {Promise<{receipt: Receipt, clientSig: string, entry: Entry}>}
   */
  countersign(receipt, serverSig, { server, session, model, start, end, tokens }) {
    return this.run(async () => {
      const checked = this.call('check_terms', {
        receipt,
        server_sig: serverSig,
        server,
        session: sessionHex(session),
        model,
        start,
        end,
        tokens,
      });
      const clientSig = await this.identity.sign(UTF8.encode(checked.message));
      const body = { kind: 'receipt', receipt: checked.receipt, client_sig: clientSig, server_sig: serverSig };
      const verified = await this.checked('receipt', body);
      const [entry] = await this.sign('receipt', { body }, verified);
      return { receipt: checked.receipt, clientSig, entry };
    });
  }

  // --- gossip -----------------------------------------------------------------------------------------

  /**
   * Open a gossip round with `peer`: a `summary` message to send it (or null).
   * @param {string} peer
   * @param {{maxMessageBytes?: number}} [options] 28 KiB through signaling (default), 60 KiB on a data channel
   * @returns {Promise<GossipMessage | null>}
   */
  gossipStart(peer, { maxMessageBytes = SIGNALING_GOSSIP_BYTES } = {}) {
    return this.run(async () => this.call('gossip_start', { peer, max_message_bytes: maxMessageBytes }));
  }

  /**
   * Handle one gossip message from `peer`; returns the replies to send back. A malformed, oversized or
   * rate-limited message is dropped (logged) and answered with nothing; one that is not a JSON object
   * is a LedgerError, as in `LedgerService.gossip_receive`.
   * @param {string} peer
   * @param {unknown} message
   * @param {{maxMessageBytes?: number}} [options]
   * @returns {Promise<GossipMessage[]>}
   */
  gossipReceive(peer, message, { maxMessageBytes = SIGNALING_GOSSIP_BYTES } = {}) {
    return this.run(async () => {
      if (message === null || typeof message !== 'object' || Array.isArray(message)) {
        throw new LedgerError('a gossip message must be a JSON object');
      }
      let size;
      try {
        size = UTF8.encode(JSON.stringify(message) ?? '').length;
      } catch {
        size = Infinity;
      }
      if (size > MAX_GOSSIP_MESSAGE_BYTES) {
        this.logger.info(`gossip from ${String(peer).slice(0, 8)} dropped: ${size} bytes is over ${MAX_GOSSIP_MESSAGE_BYTES}`);
        return [];
      }
      const verified = await this.checked('gossip', message);
      const received = await this.persist(
        this.call('gossip_receive', { peer, message, verified, max_message_bytes: maxMessageBytes }),
      );
      if (received.problem) this.logger.info(`gossip from ${String(peer).slice(0, 8)} dropped: ${received.problem}`);
      if (received.publish) await this.sign('fork_proofs', {});
      return received.replies;
    });
  }

  /** Wait for queued operations, then release Python's store. The database stays open (the caller's). */
  close() {
    return this.run(async () => {
      this.closed = true;
      this.core.destroy();
    });
  }
}

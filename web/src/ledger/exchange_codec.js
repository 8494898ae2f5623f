// @ts-check
/**
 * The ledger messages of a session link (push, receipt, gossip requests; their answers; the receipt
 * proposed at CLOSE), built and parsed by `python_peer/core/ledger_exchange.py` under Pyodide: one
 * definition for the native peer and the browser. `ExchangeCodec` wraps its `call_json`; a malformed
 * message comes back as `LedgerError` (Python's `ExchangeError`) with Python's message.
 *
 * The constructor takes the `call_json` function, so code that runs without Pyodide (tests under Node)
 * can pass another implementation.
 */

import { LedgerError } from './errors.js';
import { loadCoreModule } from './python_core.js';

/**
 * @typedef {{kind: 'push', entries: unknown[]} | {kind: 'receipt', receipt: {[key: string]: unknown},
 *   client_sig: string, server_sig: string} | {kind: 'gossip', msg: {[key: string]: unknown}}} LedgerRequest
 */
/** @typedef {{[key: string]: any}} Meta */

/**
 * The message of a Python exception raised through Pyodide (its traceback's last line, without the
 * exception's qualified name); the error's own message otherwise.
 * @param {unknown} err
 */
function pythonMessage(err) {
  const text = err instanceof Error ? err.message : String(err);
  const lines = text.trim().split('\n');
  const last = lines[lines.length - 1] ?? '';
  const match = /^(?:[\w.]+\.)?\w*(?:Error|Exception): (.*)$/s.exec(last);
  return match === null ? text : match[1];
}

/** `python_peer.core.ledger_exchange` through its `call_json`. */
export class ExchangeCodec {
  /** @param {(name: string, argsJson: string) => string} callJson */
  constructor(callJson) {
    this.callJson = callJson;
  }

  /**
   * The codec of the core served at `coreUrl` (Pyodide loaded once per page and URL).
   * @param {string | URL} coreUrl
   */
  static async load(coreUrl) {
    const module = await loadCoreModule(coreUrl, 'ledger_exchange');
    return new ExchangeCodec((name, args) => module.call_json(name, args));
  }

  /**
   * @param {string} name
   * @param {unknown[]} args
   * @returns {any}
   */
  call(name, args) {
    let out;
    try {
      out = this.callJson(name, JSON.stringify(args));
    } catch (err) {
      throw new LedgerError(pythonMessage(err), { cause: err });
    }
    return JSON.parse(out);
  }

  // --- requests (the client's) ------------------------------------------------------------------------

  /** @param {unknown[]} entries  @returns {Meta} */
  pushRequest(entries) {
    return this.call('push_request', [entries]);
  }

  /** @param {unknown} receipt @param {string} clientSig @param {string} serverSig @returns {Meta} */
  receiptRequest(receipt, clientSig, serverSig) {
    return this.call('receipt_request', [receipt, clientSig, serverSig]);
  }

  /** @param {unknown} msg @returns {Meta} */
  gossipRequest(msg) {
    return this.call('gossip_request', [msg]);
  }

  /** @param {unknown} meta @returns {LedgerRequest} LedgerError when malformed */
  parseRequest(meta) {
    return this.call('parse_request', [meta]);
  }

  /**
   * The entries an OPEN's metadata carries as its log (`OPEN_LOG`), null when it carries none; each entry
   * is parsed and checked where it is stored, as a push's.
   * @param {unknown} meta  OPEN's metadata (an object)
   * @returns {unknown[] | null} LedgerError when malformed
   */
  parseOpenLog(meta) {
    return this.call('parse_open_log', [meta]);
  }

  // --- answers (the server's) -------------------------------------------------------------------------

  /**
   * @param {number} stored  how many of the pushed entries were new here
   * @param {number} [held]  the seq through which this node now holds the pusher's own log (left out: unsaid)
   * @returns {Meta}
   */
  pushAnswer(stored, held) {
    return this.call('push_answer', held === undefined ? [stored] : [stored, held]);
  }

  /** @param {string} receiptId @returns {Meta} */
  receiptAnswer(receiptId) {
    return this.call('receipt_answer', [receiptId]);
  }

  /** The replies that fit one frame's metadata. @param {unknown[]} replies @returns {Meta} */
  gossipAnswer(replies) {
    return this.call('gossip_answer', [replies]);
  }

  /** @param {unknown} receipt @param {string | null} serverSig @returns {Meta} */
  closeAnswer(receipt, serverSig) {
    return this.call('close_answer', [receipt, serverSig]);
  }

  /** @param {unknown} meta @returns {number} */
  parsePushAnswer(meta) {
    return this.call('parse_push_answer', [meta]);
  }

  /**
   * The seq through which the server says it holds our log (`held` of a push's answer), or null if it
   * did not say.
   * @param {unknown} meta  an answer `parsePushAnswer` took (an object)
   * @returns {number | null}
   */
  parsePushHeld(meta) {
    return this.call('parse_push_held', [meta]);
  }

  /** @param {unknown} meta @returns {string} */
  parseReceiptAnswer(meta) {
    return this.call('parse_receipt_answer', [meta]);
  }

  /** @param {unknown} meta @returns {{[key: string]: unknown}[]} */
  parseGossipAnswer(meta) {
    return this.call('parse_gossip_answer', [meta]);
  }

  /**
   * The receipt proposed at CLOSE and the server's signature, or null when none is proposed.
   * @param {unknown} meta
   * @returns {{receipt: {[key: string]: unknown}, serverSig: string} | null}
   */
  parseCloseAnswer(meta) {
    const parsed = this.call('parse_close_answer', [meta]);
    return parsed === null ? null : { receipt: parsed[0], serverSig: parsed[1] };
  }
}

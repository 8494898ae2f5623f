// @ts-check
/**
 * The ledger's errors in the browser, as Python's: `LedgerError` (code as in `python_peer/core/errors.py`)
 * and its `PaymentRequiredError`. Both are `CoreError`s of web/src/protocol/wire.js, so an
 * `AI4AllError`.
 */

import { CoreError } from '../protocol/wire.js';

/** A ledger entry, request or store that is malformed or refused; `code` as in Python's `LedgerError`. */
export class LedgerError extends CoreError {
  /**
   * @param {string} message
   * @param {{code?: string, cause?: unknown}} [options]
   */
  constructor(message, { code = 'malformed', cause } = {}) {
    super(message, { cause });
    /** @type {string} */
    this.code = code;
  }
}

/** The client's balance does not cover the request (code `payment_required`); the message names both. */
export class PaymentRequiredError extends LedgerError {
  /**
   * @param {string} message
   * @param {{cause?: unknown}} [options]
   */
  constructor(message, { cause } = {}) {
    super(message, { code: 'payment_required', cause });
  }
}

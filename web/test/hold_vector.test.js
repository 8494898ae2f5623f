// @ts-check
/**
 * The golden hold entry (tests/vectors/ledger/hold_entry.json, written by Python's `tests/support/holds.py`):
 * its signing bytes, hash and author's signature, checked here with the browser's own canonical JSON
 * and WebCrypto, equal Python's; altering its amount breaks the signature.
 */

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { SignatureError, signingBytes, toHex, verify } from '../src/identity/identity.js';

const VECTOR = new URL('../../tests/vectors/ledger/hold_entry.json', import.meta.url);
const ENTRY_CONTEXT = 'ai4all/ledger/entry/v1';

test('the golden hold entry: signing bytes, hash and signature as Python made them', async () => {
  const { entry, hash, signing_bytes: expected } = JSON.parse(await readFile(VECTOR, 'utf8'));
  const { signature, ...unsigned } = entry;
  const bytes = signingBytes(ENTRY_CONTEXT, unsigned);
  assert.equal(new TextDecoder().decode(bytes), expected);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', /** @type {Uint8Array<ArrayBuffer>} */ (bytes)));
  assert.equal(toHex(digest), hash);
  await verify(entry.author, bytes, signature); // throws SignatureError when it does not match
  assert.deepEqual(Object.keys(entry.body).sort(), ['amount', 'end', 'expires', 'kind', 'model', 'server', 'session', 'start']);
  const altered = signingBytes(ENTRY_CONTEXT, { ...unsigned, body: { ...unsigned.body, amount: unsigned.body.amount + 1 } });
  await assert.rejects(verify(entry.author, altered, signature), SignatureError);
});

// @ts-check
/**
 * Signed answers in JS (src/protocol/answers.js) against the golden vectors Python writes
 * (tests/vectors/ledger/evidence.json): the same tensor digest, input chain and signing bytes, a signature
 * that verifies, and one made by a browser identity that verifies too.
 */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { answerSigningBytes, chainInput, signAnswer, tensorDigest } from '../src/protocol/answers.js';
import { Identity, verify } from '../src/identity/identity.js';

const VECTORS = JSON.parse(readFileSync(new URL('../../tests/vectors/ledger/evidence.json', import.meta.url), 'utf-8'));
const fromHex = (/** @type {string} */ text) => Uint8Array.from(text.match(/../g) ?? [], (h) => parseInt(h, 16));
const toHex = (/** @type {Uint8Array} */ bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');

test('a tensor digest and the input chain equal Python\'s', async () => {
  const t = VECTORS.tensor;
  assert.equal(await tensorDigest(t.dtype, t.shape, fromHex(t.data_hex)), t.digest);
  const c = VECTORS.input_chain;
  assert.equal(await chainInput(c.previous, c.step_digests), c.chain);
  assert.notEqual(await tensorDigest(t.dtype, [3, 4], fromHex(t.data_hex)), t.digest, 'the shape is hashed');
});

test('the signing bytes of an answer equal Python\'s and its signature verifies', async () => {
  const { signed, signing_bytes_hex: signingHex, server } = VECTORS.answer;
  assert.equal(toHex(answerSigningBytes(signed.body)), signingHex);
  await verify(server, answerSigningBytes(signed.body), signed.signature);
  const tampered = { ...signed.body, output: 'ab'.repeat(32) };
  await assert.rejects(verify(server, answerSigningBytes(tampered), signed.signature));
});

test('a browser identity signs answers Python can check (same bytes, Ed25519)', async () => {
  const identity = await Identity.generate();
  const body = { ...VECTORS.answer.signed.body, server: identity.peerId };
  const signed = await signAnswer(identity, body);
  await verify(identity.peerId, answerSigningBytes(signed.body), signed.signature);
});

// @ts-check
/**
 * The browser identity (src/identity/identity.js) on Node's WebCrypto: signing bytes and signatures
 * equal Python's (`python_peer/identity.py` from the same seed: the values below are Python's), keys
 * export and import with the same peer id, and a tampered body or signature does not verify.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  CanonicalError,
  Identity,
  SignatureError,
  exportIdentity,
  importIdentity,
  signingBytes,
  toHex,
  verify,
  verifyBody,
} from '../src/identity/identity.js';

const SEED = Array.from({ length: 32 }, (_, i) => i.toString(16).padStart(2, '0')).join('');
// PKCS8 of an Ed25519 private key: a fixed prefix, then the 32-byte seed
const PKCS8 = `302e020100300506032b657004220420${SEED}`;
const CONTEXT = 'ai4all/announce/v1';
const BODY = { b: 'é😀', a: [1, -2, null, true], éx: { z: 0 } };
// Python: Identity.from_seed(bytes(range(32))), signing_bytes(CONTEXT, BODY), sign_body(CONTEXT, BODY)
const PEER_ID = '03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8';
const SIGNING_HEX =
  '616934616c6c2f616e6e6f756e63652f76310a7b2261223a5b312c2d322c6e756c6c2c747275655d2c2262223a22c3a9f09f98' +
  '80222c22c3a978223a7b227a223a307d7d';
const SIGNATURE =
  'fab32ec01e94b1fd8f1c1f03a435f53feed1701fbdd8eb0a80ce67758ca4e916f649f60150dbb4a7ce083c20b127ce02dc57' +
  '7288386feaa6e1cb5e9d34c6400a';

test('signing bytes and signatures equal Python from the same seed', async () => {
  assert.equal(toHex(signingBytes(CONTEXT, BODY)), SIGNING_HEX);
  const identity = await importIdentity({ format: 'pkcs8', key: PKCS8 });
  assert.equal(identity.peerId, PEER_ID);
  assert.equal(await identity.signBody(CONTEXT, BODY), SIGNATURE);
  await verifyBody(PEER_ID, CONTEXT, BODY, SIGNATURE);
});

test('an exported identity imports to the same peer id, as JWK and as PKCS8', async () => {
  const identity = await Identity.generate();
  assert.match(identity.peerId, /^[0-9a-f]{64}$/);
  for (const format of /** @type {const} */ (['jwk', 'pkcs8'])) {
    const again = await importIdentity(await exportIdentity(identity, format));
    assert.equal(again.peerId, identity.peerId);
    const bytes = new TextEncoder().encode(`hello ${format}`);
    await verify(identity.peerId, bytes, await again.sign(bytes));
  }
});

test('tampered bodies, other signers and malformed signatures do not verify', async () => {
  const identity = await importIdentity({ format: 'pkcs8', key: PKCS8 });
  const other = await Identity.generate();
  await assert.rejects(verifyBody(PEER_ID, CONTEXT, { ...BODY, b: 'x' }, SIGNATURE), SignatureError);
  await assert.rejects(verifyBody(PEER_ID, 'ai4all/signal/v1', BODY, SIGNATURE), SignatureError);
  await assert.rejects(verifyBody(other.peerId, CONTEXT, BODY, SIGNATURE), SignatureError);
  await assert.rejects(verifyBody(PEER_ID, CONTEXT, BODY, SIGNATURE.toUpperCase()), SignatureError);
  await assert.rejects(verifyBody(PEER_ID, CONTEXT, { f: 0.5 }, await identity.signBody(CONTEXT, {})), SignatureError);
  assert.throws(() => signingBytes(CONTEXT, { f: 0.5 }), CanonicalError);
  assert.throws(() => signingBytes(CONTEXT, [1]), CanonicalError);
});

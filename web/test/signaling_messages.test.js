// @ts-check
/**
 * The browser's own checks of the announcements a lookup returns (src/signaling/messages.js) apply the
 * core's bounds (python_peer/core/canonical.py, through the generated constants): a seq more than
 * MAX_SEQ_AHEAD_MS past its issue time, an issue time more than MAX_CLOCK_SKEW_MS in the future, an
 * expiry already past or outside the TTL bounds are refused; a `peers` reply carrying such an item loses
 * only that item. Every announcement is really signed, so only the bound can refuse it. A signed
 * `bye` signs the bytes Python's node checks.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Identity, importIdentity, signingBytes, toHex } from '../src/identity/identity.js';
import {
  ANNOUNCE_CONTEXT,
  BYE_CONTEXT,
  MAX_CLOCK_SKEW_MS,
  MAX_SAFE_INT,
  MAX_SEQ_AHEAD_MS,
  MAX_TTL_MS,
  MIN_TTL_MS,
} from '../src/protocol/constants.js';
import { AnnouncementError, byeBody, parseAnnouncement, verifyPeerItem, verifyPeers } from '../src/signaling/messages.js';

const NOW = 1_700_000_000_000;
const quiet = { info: () => {}, warn: () => {} };

/**
 * A signed `{body, sig}` of `identity`, issued at NOW unless `fields` say otherwise.
 * @param {Identity} identity
 * @param {{[key: string]: unknown}} [fields]
 */
async function signed(identity, fields = {}) {
  const body = {
    v: 1,
    peer_id: identity.peerId,
    kind: 'native',
    seq: NOW,
    issued_ms: NOW,
    expires_ms: NOW + 120_000,
    serves: [{ model: 'm', start: 0, end: 4 }],
    throughput_milli: 1000,
    kv_free_tokens: 4096,
    signaling: ['ws://127.0.0.1:9000'],
    ...fields,
  };
  return { body, sig: await identity.signBody(ANNOUNCE_CONTEXT, body) };
}

test('the bounds are the core constants', () => {
  assert.equal(MAX_SEQ_AHEAD_MS, 60_000);
  assert.equal(MAX_CLOCK_SKEW_MS, 60_000);
});

test('seq at most MAX_SEQ_AHEAD_MS past issued_ms: the edge passes, one more is refused', async () => {
  const identity = await Identity.generate();
  const edge = await signed(identity, { seq: NOW + MAX_SEQ_AHEAD_MS });
  assert.equal((await verifyPeerItem(edge, NOW)).seq, NOW + MAX_SEQ_AHEAD_MS);
  for (const seq of [NOW + MAX_SEQ_AHEAD_MS + 1, NOW + 1e9, MAX_SAFE_INT]) {
    const item = await signed(identity, { seq });
    assert.throws(() => parseAnnouncement(item.body), (err) => err instanceof AnnouncementError && err.code === 'bad_announcement' && /ahead of issued_ms/.test(err.message));
    await assert.rejects(verifyPeerItem(item, NOW), AnnouncementError);
  }
});

test('times are bounded relative to now: issued in the future, expired, TTL out of bounds', async () => {
  const identity = await Identity.generate();
  const future = await signed(identity, { issued_ms: NOW + MAX_CLOCK_SKEW_MS + 1, seq: NOW + MAX_CLOCK_SKEW_MS + 1, expires_ms: NOW + 200_000 });
  await assert.rejects(verifyPeerItem(future, NOW), /issued in the future/);
  const skewed = await signed(identity, { issued_ms: NOW + MAX_CLOCK_SKEW_MS, seq: NOW + MAX_CLOCK_SKEW_MS, expires_ms: NOW + 200_000 });
  assert.equal((await verifyPeerItem(skewed, NOW)).issued_ms, NOW + MAX_CLOCK_SKEW_MS);
  const expired = await signed(identity, { expires_ms: NOW + MIN_TTL_MS });
  await assert.rejects(verifyPeerItem(expired, NOW + MIN_TTL_MS), (err) => err instanceof AnnouncementError && err.code === 'expired');
  const tooLong = await signed(identity, { expires_ms: NOW + MAX_TTL_MS + 1 });
  await assert.rejects(verifyPeerItem(tooLong, NOW), /expires_ms/);
  const tooShort = await signed(identity, { expires_ms: NOW + MIN_TTL_MS - 1 });
  await assert.rejects(verifyPeerItem(tooShort, NOW), /expires_ms/);
});

test('a lookup reply loses only the item out of bounds', async () => {
  const honest = await Identity.generate();
  const liar = await Identity.generate();
  const items = [await signed(liar, { seq: MAX_SAFE_INT }), await signed(honest)];
  const found = await verifyPeers(items, 'm', 0, 4, { nowMs: NOW, log: quiet });
  assert.deepEqual(
    found.map((a) => a.peer_id),
    [honest.peerId],
  );
});

test('a bye is signed over the bytes Python checks (bye_body, BYE_CONTEXT)', async () => {
  // Python: Identity.from_seed(bytes(range(32))).sign_body(BYE_CONTEXT, bye_body(peer_id, 1_700_000_000_000))
  const seed = Array.from({ length: 32 }, (_, i) => i.toString(16).padStart(2, '0')).join('');
  const identity = await importIdentity({ format: 'pkcs8', key: `302e020100300506032b657004220420${seed}` });
  const body = byeBody(identity.peerId, NOW);
  assert.equal(
    toHex(signingBytes(BYE_CONTEXT, body)),
    '616934616c6c2f6279652f76310a7b22706565725f6964223a2230336131303762666633636531306265316437306464313865373462633039393637653464363330396261353064356631646463383636343132353533316238222c22736571223a313730303030303030303030307d',
  );
  assert.equal(
    await identity.signBody(BYE_CONTEXT, body),
    '8f3e3564f30b68307e14ed9d63256d299d62c47d761b19358554a4752572178a7b12f4250c53d74f5a1be23f662e2283b8da0d9d0520e1a9086ba34dd6b98309',
  );
});

test('a client re-announces within half the idle bound a node advertises in hello, never more often than MIN_RENEW_MS', async () => {
  const { SignalClient, MIN_RENEW_MS } = await import('../src/signaling/client.js');
  const { SIGNALING_FIRST_MESSAGE_MS, SIGNALING_IDLE_MS } = await import('../src/protocol/constants.js');
  const client = new SignalClient(await Identity.generate(), { urls: ['ws://127.0.0.1:9'], log: quiet });
  const hello = (/** @type {unknown} */ limits) => ({ type: 'hello', protocol: 1, node_id: 'n', nonce: 'ab', siblings: [], limits });
  const renew = (/** @type {unknown} */ limits) => {
    const link = /** @type {any} */ ({ nodeId: '', nonce: '', renewMs: 0 });
    client.readHello(link, hello(limits));
    return link.renewMs;
  };
  // the protocol's bounds (what a node advertises by default) leave the client's own 40 s period
  assert.equal(renew({ first_message_ms: SIGNALING_FIRST_MESSAGE_MS, idle_ms: SIGNALING_IDLE_MS }), 40_000);
  assert.equal(renew({ first_message_ms: 10_000, idle_ms: 3_000 }), 1_500); // a node with a 3 s bound
  assert.equal(renew({ idle_ms: 10 }), MIN_RENEW_MS); // a node asking absurdly often is not obeyed
  for (const bad of [undefined, null, { idle_ms: '3000' }, { idle_ms: -5 }, { idle_ms: 1.5 }, { idle_ms: true }]) {
    assert.equal(renew(bad), 40_000); // an older node, or a malformed bound: the client's own period
  }
});

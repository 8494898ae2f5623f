// @ts-check
/**
 * The browser's own checks of the announcements a lookup returns (src/signaling/messages.js) apply the
 * core's bounds (python_peer/core/canonical.py, through the generated constants): a seq more than
 * MAX_SEQ_AHEAD_MS past its issue time, an issue time more than MAX_CLOCK_SKEW_MS in the future, an
 * expiry already past or outside the TTL bounds are refused; a `peers` reply carrying such an item loses
 * only that item. Every announcement is really signed, so only the bound can refuse it.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Identity } from '../src/identity/identity.js';
import {
  ANNOUNCE_CONTEXT,
  MAX_CLOCK_SKEW_MS,
  MAX_SAFE_INT,
  MAX_SEQ_AHEAD_MS,
  MAX_TTL_MS,
  MIN_TTL_MS,
} from '../src/protocol/constants.js';
import { AnnouncementError, parseAnnouncement, verifyPeerItem, verifyPeers } from '../src/signaling/messages.js';

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

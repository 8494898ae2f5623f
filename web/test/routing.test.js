// @ts-check
/** Route choice (src/client/routing.js), the mirror of python_peer/routing.py: costs, bans, no route. */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  BanList,
  DEFAULT_BLOCK_S,
  DEFAULT_RTT_S,
  NoRouteError,
  candidateCost,
  chooseRoute,
  routeLiftingBans,
} from '../src/client/routing.js';

/**
 * @param {string} peerId
 * @param {number} start
 * @param {number} end
 * @param {Partial<import('../src/client/routing.js').Candidate>} [extra]
 * @returns {import('../src/client/routing.js').Candidate}
 */
const cand = (peerId, start, end, extra = {}) => ({
  peerId, start, end, throughput: 100, kvFreeTokens: 1000, rttS: 0.01, ...extra,
});
/** @param {import('../src/client/routing.js').Candidate[]} route */
const ids = (route) => route.map((c) => c.peerId);

test('a candidate costs its round trip plus its blocks at the announced throughput', () => {
  assert.equal(candidateCost(cand('a', 0, 10, { throughput: 100, rttS: 0.02 })), 0.02 + 10 / 100);
  assert.equal(candidateCost(cand('a', 0, 4, { throughput: 0, rttS: null })), DEFAULT_RTT_S + 4 * DEFAULT_BLOCK_S);
});

test('the cheapest chain covering the blocks exactly wins, mixing span sizes', () => {
  const candidates = [
    cand('whole', 0, 30, { throughput: 10 }), // 3 s of compute
    cand('first', 0, 10),
    cand('second', 10, 30),
    cand('overlap', 5, 30), // starts where no chain ends: never usable
  ];
  assert.deepEqual(ids(chooseRoute(candidates, 0, 30)), ['first', 'second']);
  assert.deepEqual(ids(chooseRoute(candidates, 10, 30)), ['second']);
});

test('peers without KV room, banned peers and spans outside the request are left out', () => {
  const candidates = [cand('full', 0, 10, { kvFreeTokens: 5 }), cand('banned', 0, 10), cand('slow', 0, 10, { rttS: 1 })];
  const banned = new BanList(60);
  banned.ban('banned');
  assert.deepEqual(ids(chooseRoute(candidates, 0, 10, { banned, tokensNeeded: 6 })), ['slow']);
  assert.deepEqual(ids(chooseRoute([cand('wide', 0, 20)], 0, 20)), ['wide']);
  assert.throws(() => chooseRoute([cand('wide', 0, 20)], 0, 10), NoRouteError);
});

test('a gap in coverage is a NoRouteError that names the usable spans', () => {
  assert.throws(
    () => chooseRoute([cand('a', 0, 10), cand('b', 20, 30)], 0, 30),
    (err) => err instanceof NoRouteError && /blocks 0-30 \(usable spans: 0-10, 20-30\)/.test(err.message),
  );
  assert.throws(() => chooseRoute([], 0, 30), /no usable peers/);
});

test('bans expire and the list stays bounded, dropping the oldest ban first', () => {
  const bans = new BanList(1, 2);
  bans.ban('a', 0);
  bans.ban('b', 10);
  assert.ok(bans.banned('a', 500));
  assert.ok(!bans.banned('a', 1000));
  bans.ban('c', 20); // full: the oldest (a) goes
  assert.deepEqual([...bans.until.keys()], ['b', 'c']);
});

test('only banned peers left: the oldest ban is lifted first, never the one that failed a moment ago', () => {
  const bans = new BanList(60);
  const now = performance.now();
  bans.ban('old', now - 50_000);
  bans.ban('recent', now - 10_000);
  bans.ban('fast-but-just-failed', now);
  const candidates = [
    cand('fast-but-just-failed', 0, 4, { throughput: 10_000 }),
    cand('recent', 0, 4, { throughput: 100 }),
    cand('old', 0, 4, { throughput: 1 }),
  ];
  assert.deepEqual(bans.oldestFirst(candidates.map((c) => c.peerId)), ['old', 'recent', 'fast-but-just-failed']);
  assert.deepEqual(ids(routeLiftingBans(candidates, 0, 4, bans)), ['old']);
  assert.deepEqual(ids(routeLiftingBans([...candidates, cand('free', 0, 4)], 0, 4, bans)), ['free']);
  assert.throws(() => routeLiftingBans([cand('half', 0, 2), cand('recent', 2, 3)], 0, 4, bans), NoRouteError);
  assert.ok(bans.lifted(['old']).banned('recent') && !bans.lifted(['old']).banned('old') && bans.banned('old'));
});

// @ts-check
/**
 * Choosing a route: the chain of peers that covers a model's blocks with the lowest expected latency,
 * the mirror of `python_peer/routing.py`.
 *
 * As in Petals' sequence manager, a hop costs its measured round trip plus the time its blocks take
 * (announced block-tokens per second). Peers with no KV room or banned after a failure are left out.
 * A route is a shortest path over layer boundaries, so it may mix peers that serve spans of any size.
 */

import { AI4AllError } from '../protocol/wire.js';

export const DEFAULT_RTT_S = 0.05; // assumed for peers not yet measured
export const DEFAULT_BLOCK_S = 0.01; // assumed per block for peers that announce no throughput

/** No set of reachable peers covers the requested blocks. */
export class NoRouteError extends AI4AllError {}

/**
 * One peer serving one span, as seen through signaling and our own measurements.
 * @typedef {object} Candidate
 * @property {string} peerId
 * @property {number} start
 * @property {number} end
 * @property {number} throughput  block-tokens per second, as announced (0: unknown)
 * @property {number} kvFreeTokens
 * @property {number | null} rttS  measured round trip in seconds, null before any
 */

/**
 * Python's `Candidate.cost()`: round trip plus the span's blocks at the announced throughput.
 * @param {Candidate} candidate
 */
export function candidateCost(candidate) {
  const perBlock = candidate.throughput > 0 ? 1 / candidate.throughput : DEFAULT_BLOCK_S;
  const rtt = candidate.rttS ?? DEFAULT_RTT_S;
  return rtt + (candidate.end - candidate.start) * perBlock;
}

/** Peers that failed recently, avoided until their ban expires. */
export class BanList {
  /**
   * @param {number} [seconds]
   * @param {number} [maxSize]
   */
  constructor(seconds = 60, maxSize = 4096) {
    this.seconds = seconds;
    this.maxSize = maxSize;
    /** @type {Map<string, number>} peer id -> until (ms, `performance.now()` clock) */
    this.until = new Map();
  }

  /**
   * @param {string} peerId
   * @param {number} [now]  ms
   */
  ban(peerId, now = performance.now()) {
    if (this.until.size >= this.maxSize) {
      for (const [peer, until] of this.until) if (until <= now) this.until.delete(peer);
      while (this.until.size >= this.maxSize) this.until.delete(/** @type {string} */ (this.until.keys().next().value));
    }
    this.until.delete(peerId); // re-inserted last, so the oldest ban is dropped first when full
    this.until.set(peerId, now + this.seconds * 1000);
  }

  /**
   * @param {string} peerId
   * @param {number} [now]  ms
   */
  banned(peerId, now = performance.now()) {
    return (this.until.get(peerId) ?? 0) > now;
  }

  /**
   * Those of `peerIds` banned now, the one that failed longest ago first (Python's `oldest_first`).
   * @param {Iterable<string>} peerIds
   * @param {number} [now]  ms
   * @returns {string[]}
   */
  oldestFirst(peerIds, now = performance.now()) {
    const banned = [...new Set(peerIds)].filter((p) => this.banned(p, now));
    const until = (/** @type {string} */ p) => /** @type {number} */ (this.until.get(p));
    return banned.sort((a, b) => until(a) - until(b) || (a < b ? -1 : a > b ? 1 : 0));
  }

  /**
   * A copy of this list without the bans of `peerIds`.
   * @param {Iterable<string>} peerIds
   * @returns {BanList}
   */
  lifted(peerIds) {
    const gone = new Set(peerIds);
    const copy = new BanList(this.seconds, this.maxSize);
    for (const [peer, until] of this.until) if (!gone.has(peer)) copy.until.set(peer, until);
    return copy;
  }
}

/**
 * The cheapest chain of candidates covering `[start, end)` exactly, hop after hop (Python's `choose_route`).
 * @param {readonly Candidate[]} candidates
 * @param {number} start
 * @param {number} end
 * @param {{banned?: BanList | null, tokensNeeded?: number}} [options]
 * @returns {Candidate[]}
 */
export function chooseRoute(candidates, start, end, { banned = null, tokensNeeded = 1 } = {}) {
  const usable = candidates.filter(
    (c) =>
      start <= c.start &&
      c.start < c.end &&
      c.end <= end &&
      c.kvFreeTokens >= tokensNeeded &&
      !(banned !== null && banned.banned(c.peerId)),
  );
  /** @type {Map<number, {cost: number, path: Candidate[]}>} */
  const best = new Map([[start, { cost: 0, path: [] }]]);
  for (let position = start; position < end; position++) {
    const here = best.get(position);
    if (here === undefined) continue;
    for (const cand of usable) {
      if (cand.start !== position) continue;
      const total = here.cost + candidateCost(cand);
      const there = best.get(cand.end);
      if (there === undefined || total < there.cost) best.set(cand.end, { cost: total, path: [...here.path, cand] });
    }
  }
  const found = best.get(end);
  if (found === undefined) {
    const covered = [...new Set(usable.map((c) => `${c.start}-${c.end}`))].sort(
      (a, b) => Number(a.split('-')[0]) - Number(b.split('-')[0]) || Number(a.split('-')[1]) - Number(b.split('-')[1]),
    );
    throw new NoRouteError(
      `no reachable peers cover blocks ${start}-${end}` +
        (covered.length ? ` (usable spans: ${covered.join(', ')})` : ' (no usable peers)'),
    );
  }
  return found.path;
}

/**
 * `chooseRoute` avoiding banned peers; when only banned peers can cover the span, lift bans one peer at a
 * time, the oldest first, so a peer that failed long ago (restarted since) gets its second chance before
 * one that failed a moment ago (Python's `route_lifting_bans`; found by bench/chaos.py).
 * @param {readonly Candidate[]} candidates
 * @param {number} start
 * @param {number} end
 * @param {BanList} banned
 * @param {number} [tokensNeeded]
 * @returns {Candidate[]}
 */
export function routeLiftingBans(candidates, start, end, banned, tokensNeeded = 1) {
  /** @type {string[]} */
  let waiting;
  try {
    return chooseRoute(candidates, start, end, { banned, tokensNeeded });
  } catch (err) {
    waiting = banned.oldestFirst(candidates.map((c) => c.peerId));
    if (!(err instanceof NoRouteError) || waiting.length === 0) throw err;
  }
  for (let count = 1; count < waiting.length; count++) {
    try {
      return chooseRoute(candidates, start, end, { banned: banned.lifted(waiting.slice(0, count)), tokensNeeded });
    } catch (err) {
      if (!(err instanceof NoRouteError)) throw err;
    }
  }
  return chooseRoute(candidates, start, end, { banned: banned.lifted(waiting), tokensNeeded });
}

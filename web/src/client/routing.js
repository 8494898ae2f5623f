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

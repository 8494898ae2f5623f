// @ts-check
/**
 * Spot checks of the browser's mesh client (BOINC's adaptive replication): the mirror of
 * `python_peer/spot_check.py`, with the same numbers (`SPOT_CHECK_*` of the generated
 * web/src/protocol/constants.js, from `python_peer/core/spot_policy.py`).
 *
 * When a session closes, the client draws, for each hop, whether to check it, with a probability that
 * falls with the peer's run of passed checks (`checkRate`: 1 for a new peer until it passed `warmup`
 * checks, then `(warmup / (passes + 1))**2`, never below `floor`). A checked hop's history (the inputs
 * the session keeps for failover replay anyway) is replayed step by step to a second peer serving the
 * same blocks, drawn at random among the others, through the same open path as any hop (its hold
 * written when the client keeps a ledger), so the checked peer cannot tell a check from another client.
 * Each step's outputs are compared within the tolerance of the shards' dtype. A disagreement is settled
 * by a third peer: the one whose answer differs from the two others is the liar. The client then appends
 * an `evidence` entry to its ledger (`BrowserLedger.appendEvidence`, the body checked by
 * `python_peer/core/evidence.py` under Pyodide), gossiped like any other entry (pushed with the next
 * hold to each peer, and in the gossip exchange after the honest peers' receipts), never countersigns the
 * liar's receipt for that session, bans the liar and routes around it from then on (`caught`). Checks run
 * after the session's last token, so they delay no token; they delay the session's close (and its
 * receipts) by one replay of the hop.
 *
 * Unlike a native client, a browser client holds no block shard of its own, so when no third peer
 * serves the span a disagreement stays inconclusive (no one is accused, both are paid).
 */

import { MAX_TRACKED_PEERS, SPOT_CHECK_FLOOR, SPOT_CHECK_TOLERANCES, SPOT_CHECK_WARMUP } from '../protocol/constants.js';
import { FrameFlags, PaymentRequiredError } from '../protocol/wire.js';
import { isHopFailure } from './errors.js';

/** @typedef {import('./hop.js').Hidden} Hidden */
/** @typedef {import('./hop.js').Hop} Hop */
/** @typedef {import('./hop.js').SignedAnswer} SignedAnswer */
/** @typedef {import('./session.js').MeshSession} MeshSession */

/**
 * How often hops are checked and how close two answers must be (Python's `SpotCheckPolicy`).
 * @typedef {object} SpotCheckPolicy
 * @property {number} floor  the lowest check rate
 * @property {number} warmup  checks a peer passes before it is checked less than every session
 * @property {Readonly<Record<string, number>>} tolerances  per shard dtype
 * @property {() => number} random  uniform in [0, 1): tests draw reproducibly
 */

/** A uniform draw in [0, 1) from the platform's cryptographic randomness (Python's `SystemRandom`). */
export function systemRandom() {
  const [word] = crypto.getRandomValues(new Uint32Array(1));
  return word / 2 ** 32;
}

/** @type {Readonly<SpotCheckPolicy>} */
export const DEFAULT_POLICY = Object.freeze({
  floor: SPOT_CHECK_FLOOR,
  warmup: SPOT_CHECK_WARMUP,
  tolerances: SPOT_CHECK_TOLERANCES,
  random: systemRandom,
});

/**
 * The probability of checking a peer with `passes` checks passed in a row (`spot_policy.check_rate`).
 * @param {number} passes
 * @param {number} [warmup]
 * @param {number} [floor]
 */
export function checkRate(passes, warmup = SPOT_CHECK_WARMUP, floor = SPOT_CHECK_FLOOR) {
  if (passes < warmup) return 1.0;
  return Math.max(floor, Math.min(1.0, (warmup / (passes + 1)) ** 2));
}

/**
 * The agreement tolerance of shards of `dtype` (`q4`'s for a dtype not listed).
 * @param {string | undefined} dtype
 * @param {Readonly<Record<string, number>>} [tolerances]
 */
export function toleranceFor(dtype, tolerances = SPOT_CHECK_TOLERANCES) {
  const known = dtype !== undefined && Object.hasOwn(tolerances, dtype);
  return known ? tolerances[/** @type {string} */ (dtype)] : SPOT_CHECK_TOLERANCES.q4;
}

/**
 * `max |a - b| / max(max |a|, max |b|)`; infinite when the shapes differ.
 * @param {Hidden} a
 * @param {Hidden} b
 */
export function relativeDiff(a, b) {
  if (a.dims.length !== b.dims.length || a.dims.some((d, i) => d !== b.dims[i]) || a.data.length !== b.data.length) return Infinity;
  let maxA = 0;
  let maxB = 0;
  let maxDiff = 0;
  for (let i = 0; i < a.data.length; i++) {
    maxA = Math.max(maxA, Math.abs(a.data[i]));
    maxB = Math.max(maxB, Math.abs(b.data[i]));
    maxDiff = Math.max(maxDiff, Math.abs(a.data[i] - b.data[i]));
  }
  return maxDiff / Math.max(maxA, maxB, 1e-6);
}

/**
 * Whether two outputs of the same step agree: `max |a - b| <= tolerance * max(max |a|, max |b|)`.
 * @param {Hidden} a
 * @param {Hidden} b
 * @param {number} tolerance
 */
export function agree(a, b, tolerance) {
  return relativeDiff(a, b) <= tolerance;
}

/**
 * The outcome of checking one hop: `passed`, `liar` (with `liar` and, when every answer was signed,
 * `evidence`), `inconclusive` or `unchecked`.
 * @typedef {{outcome: 'passed' | 'liar' | 'inconclusive' | 'unchecked', liar?: string,
 *   evidence?: {kind: 'evidence', liar: SignedAnswer, honest: SignedAnswer[]}, step?: number}} Verdict
 */

/** @typedef {{hop: Hop, outputs: Hidden[], answers: (SignedAnswer | null)[]}} Replay */

/** A client's spot checks: the policy, each peer's run of passed checks, the peers it caught. */
export class SpotChecks {
  /** @param {Partial<SpotCheckPolicy>} [policy] */
  constructor(policy = {}) {
    /** @type {SpotCheckPolicy} */
    this.policy = { ...DEFAULT_POLICY, ...policy };
    /** @type {Map<string, number>} peer id -> checks passed in a row (oldest first, bounded) */
    this.passes = new Map();
    /** @type {Map<string, string>} peer id -> why it was caught */
    this.caught = new Map();
    /** What the checks cost and found: block-tokens are blocks x token positions. */
    this.stats = {
      sessionsChecked: 0,
      passed: 0,
      caught: 0,
      inconclusive: 0,
      unchecked: 0, // drawn for a check, but no other peer serves the span
      usedBlockTokens: 0, // of the hops the client used for its own sessions
      checkBlockTokens: 0, // replayed to checking and settling peers
      largestAgreeingDiff: 0,
      evidenceWritten: 0,
    };
  }

  /** @param {string} peerId */
  rate(peerId) {
    return checkRate(this.passes.get(peerId) ?? 0, this.policy.warmup, this.policy.floor);
  }

  /**
   * Whether to check `peerId`'s hop in this session.
   * @param {string} peerId
   */
  draw(peerId) {
    return this.policy.random() < this.rate(peerId);
  }

  /** @param {string} peerId */
  #notePass(peerId) {
    const passes = (this.passes.get(peerId) ?? 0) + 1;
    this.passes.delete(peerId);
    this.passes.set(peerId, passes);
    while (this.passes.size > MAX_TRACKED_PEERS) this.passes.delete(/** @type {string} */ (this.passes.keys().next().value));
  }

  /** @param {string} peerId @param {string} why */
  #noteLiar(peerId, why) {
    this.passes.delete(peerId);
    this.caught.delete(peerId);
    this.caught.set(peerId, why);
    while (this.caught.size > MAX_TRACKED_PEERS) this.caught.delete(/** @type {string} */ (this.caught.keys().next().value));
  }

  /**
   * Replay `hop`'s history to another peer and, on a disagreement, to a third; see the module.
   * @param {MeshSession} session
   * @param {Hop} hop
   * @returns {Promise<Verdict>}
   */
  async check(session, hop) {
    const client = session.client;
    const tolerance = toleranceFor(/** @type {{dtype?: string}} */ (client.manifest).dtype, this.policy.tolerances);
    const ledger = /** @type {{reputations?: () => Promise<Record<string, string>>} | null} */ (client.ledger);
    const levels = typeof ledger?.reputations === 'function' ? await ledger.reputations() : {};
    const sameSpan = (await client.candidates(hop.start, hop.end)).filter((c) => c.start === hop.start && c.end === hop.end);
    const others = [...new Set(sameSpan.map((c) => c.peerId))]
      .filter((p) => p !== hop.peerId && p !== client.signal.peerId)
      .filter((p) => !this.caught.has(p) && levels[p] === undefined && !client.bans.banned(p))
      .sort();
    if (others.length === 0) {
      this.stats.unchecked++;
      return { outcome: 'unchecked' };
    }
    this.stats.sessionsChecked++;
    const checkerId = this.#choice(others);
    const checker = await this.#replay(session, hop, checkerId, hop.history.length);
    if (checker === null) {
      this.stats.inconclusive++;
      return { outcome: 'inconclusive' };
    }
    const j = checker.outputs.findIndex((out, i) => !agree(out, hop.outputs[i], tolerance));
    if (j < 0) {
      for (const [i, out] of checker.outputs.entries()) {
        this.stats.largestAgreeingDiff = Math.max(this.stats.largestAgreeingDiff, relativeDiff(out, hop.outputs[i]));
      }
      this.#notePass(hop.peerId);
      this.#notePass(checkerId);
      this.stats.passed++;
      await session.closeHop(checker.hop);
      return { outcome: 'passed' };
    }
    client.log.warn(`peer ${hop.peerId.slice(0, 8)} and peer ${checkerId.slice(0, 8)} disagree at step ${j}: settling`);
    const settlers = others.filter((p) => p !== checkerId);
    const settler = settlers.length > 0 ? await this.#replay(session, hop, this.#choice(settlers), j + 1) : null;
    /** @type {Verdict} */
    let verdict = { outcome: 'inconclusive' };
    if (settler !== null) verdict = this.#judge(hop, checker, settler, tolerance);
    if (verdict.liar === undefined) {
      this.stats.inconclusive++;
    } else {
      this.stats.caught++;
      this.#noteLiar(verdict.liar, `lied at step ${verdict.step} of a session`);
      client.bans.ban(verdict.liar);
      await this.#record(client, verdict);
    }
    // The honest replays are paid: their receipts' gossip carries the evidence to those peers too.
    for (const replay of [checker, settler]) {
      if (replay !== null) await session.closeHop(replay.hop, { pay: replay.hop.peerId !== verdict.liar });
    }
    return verdict;
  }

  /**
   * Append the verdict's evidence to the client's ledger, when it keeps one that can.
   * @param {MeshSession['client']} client
   * @param {Verdict} verdict
   */
  async #record(client, verdict) {
    const liar = /** @type {string} */ (verdict.liar).slice(0, 8);
    const ledger = /** @type {{appendEvidence?: (body: unknown) => Promise<{seq?: number}>} | null} */ (client.ledger);
    if (verdict.evidence === undefined || typeof ledger?.appendEvidence !== 'function') {
      client.log.warn(`peer ${liar} lied (step ${verdict.step}); no evidence recorded${verdict.evidence === undefined ? ' (an answer was unsigned)' : ' (no ledger)'}`);
      return;
    }
    try {
      const entry = await ledger.appendEvidence(verdict.evidence);
      this.stats.evidenceWritten++;
      client.log.warn(`evidence against ${liar} recorded (entry seq ${entry.seq})`);
    } catch (err) {
      // the verdict stands for this client: unpaid, banned, avoided
      client.log.warn(`evidence against ${liar} could not be recorded: ${err instanceof Error ? err.message : err}`);
    }
  }

  /**
   * The first step where one of three peers disagrees with two that agree: that one lied.
   * @param {Hop} hop
   * @param {Replay} checker
   * @param {Replay} settler
   * @param {number} tolerance
   * @returns {Verdict}
   */
  #judge(hop, checker, settler, tolerance) {
    const runs = [
      { peerId: hop.peerId, outputs: hop.outputs, answers: hop.answers },
      { peerId: checker.hop.peerId, outputs: checker.outputs, answers: checker.answers },
      { peerId: settler.hop.peerId, outputs: settler.outputs, answers: settler.answers },
    ];
    for (let step = 0; step < settler.outputs.length; step++) {
      const outs = runs.map((r) => r.outputs[step]);
      for (let odd = 0; odd < 3; odd++) {
        const [a, b] = [0, 1, 2].filter((k) => k !== odd);
        if (agree(outs[a], outs[b], tolerance) && !agree(outs[odd], outs[a], tolerance) && !agree(outs[odd], outs[b], tolerance)) {
          const liar = runs[odd].answers[step];
          const honest = [runs[a].answers[step], runs[b].answers[step]];
          /** @type {Verdict} */
          const verdict = { outcome: 'liar', liar: runs[odd].peerId, step };
          if (liar !== null && honest[0] !== null && honest[1] !== null && honest.every((h) => h?.body.output !== liar.body.output)) {
            verdict.evidence = { kind: 'evidence', liar, honest: /** @type {SignedAnswer[]} */ (honest) };
          }
          return verdict;
        }
      }
      if (!agree(outs[0], outs[1], tolerance)) return { outcome: 'inconclusive', step }; // three different answers
    }
    return { outcome: 'inconclusive' };
  }

  /**
   * Open a session on `peerId` for `hop`'s span and replay its first `steps` steps one by one; null if
   * the peer fails (banned like any failed hop) or will not serve us (our balance: no ban).
   * @param {MeshSession} session
   * @param {Hop} hop
   * @param {string} peerId
   * @param {number} steps
   * @returns {Promise<Replay | null>}
   */
  async #replay(session, hop, peerId, steps) {
    const client = session.client;
    /** @type {Hop | null} */
    let opened = null;
    try {
      opened = await session.openHop(peerId, hop.start, hop.end);
      /** @type {Replay} */
      const replay = { hop: opened, outputs: [], answers: [] };
      for (const inputs of hop.history.slice(0, steps)) {
        replay.outputs.push(await opened.forward(inputs, FrameFlags.REPLAY));
        replay.answers.push(opened.answers[opened.answers.length - 1] ?? null);
        opened.history.push(inputs);
      }
      this.stats.checkBlockTokens += opened.tokens * (hop.end - hop.start);
      return replay;
    } catch (err) {
      const refused = err instanceof PaymentRequiredError || /** @type {{code?: unknown}} */ (err)?.code === 'payment_required';
      if (!refused && !isHopFailure(err)) throw err;
      const why = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
      if (refused) {
        client.log.info(`peer ${peerId.slice(0, 8)} will not check for us: ${why}`);
      } else {
        client.log.warn(`checking peer ${peerId.slice(0, 8)} failed: ${why}`);
        client.bans.ban(peerId);
      }
      if (opened !== null) {
        this.stats.checkBlockTokens += opened.tokens * (hop.end - hop.start);
        await session.closeHop(opened);
      }
      return null;
    }
  }

  /**
   * @param {string[]} items  not empty
   * @returns {string}
   */
  #choice(items) {
    return items[Math.min(items.length - 1, Math.floor(this.policy.random() * items.length))];
  }

  /** What the checks cost and found, with the overhead in block-tokens. */
  summary() {
    const s = this.stats;
    return { ...s, overhead: s.usedBlockTokens ? s.checkBlockTokens / s.usedBlockTokens : 0 };
  }
}

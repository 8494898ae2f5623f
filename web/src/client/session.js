// @ts-check
/**
 * One generation's sessions along a route through the mesh (the mirror of Python's `MeshSession`):
 * opening a session on each hop (all hops of a route at once: ./route_open.js), running each step down
 * the chain, and failover: when a hop fails, its peer is banned, the span is routed around, and the
 * hidden states sent to it are replayed to the replacement (one FORWARD with the REPLAY flag). At close,
 * each hop's receipt is settled through the client's ledger exchange.
 */

import { AI4AllError, FrameType } from '../protocol/wire.js';
import { MAX_BATCH, MAX_LENGTH_LIMIT } from '../protocol/constants.js';
import { MeshError, isHopFailure } from './errors.js';
import { Hop, positionIdsFor } from './hop.js';
import { openRoute } from './route_open.js';

/** @typedef {import('./hop.js').Hidden} Hidden */
/** @typedef {import('./hop.js').StepInputs} StepInputs */
/** @typedef {import('./mesh_client.js').MeshClient} MeshClient */

/** One generation's sessions along a route; `step` returns the logits of the last new token. */
export class MeshSession {
  /**
   * @param {MeshClient} client
   * @param {number} batch
   * @param {number} maxLength
   */
  constructor(client, batch, maxLength) {
    // A session the peers would refuse, or whose last steps they would (positions past the model's
    // context), is the caller's mistake: refused here, before any hold or OPEN, rather than taken for one
    // peer failing after another (each banned).
    if (!Number.isInteger(batch) || batch < 1 || batch > MAX_BATCH) throw new MeshError(`batch ${batch} must be an integer in 1..${MAX_BATCH}`);
    const context = client.context ?? null;
    const limit = context === null ? MAX_LENGTH_LIMIT : Math.min(context, MAX_LENGTH_LIMIT);
    if (!Number.isInteger(maxLength) || maxLength < 1 || maxLength > limit) {
      throw new MeshError(`max_length ${maxLength} must be an integer in 1..${limit}${context === null ? '' : `; the model's context holds ${context}`}`);
    }
    this.client = client;
    this.batch = batch;
    this.maxLength = maxLength;
    /** @type {Hop[]} */
    this.hops = [];
    this.length = 0;
    /** @type {number[]} real tokens so far, per row */
    this.pastCounts = new Array(batch).fill(0);
    this.failovers = 0;
    this.lastFailure = '';
    this.closed = false;
    /** @type {Promise<void>} steps run one after another */
    this.queue = Promise.resolve();
  }

  /** @returns {[string, number, number][]} (peer id, start, end) of each hop */
  get route() {
    return this.hops.map((h) => [h.peerId, h.start, h.end]);
  }

  async start() {
    this.hops = await openRoute(this, 0, this.client.numLayers, []);
  }

  /**
   * A new session of this generation on `peerId` for blocks `[start, end)`: `session` (a new id by
   * default), paid by `hold` (written by `ClientExchange.writeHolds` for that session; by default one
   * written now when the client keeps a ledger), our log pushed there and the hold named in OPEN (spot
   * checks open their replays here too).
   * @param {string} peerId
   * @param {number} start
   * @param {number} end
   * @param {{session?: Uint8Array, hold?: string | null}} [paid]
   * @returns {Promise<Hop>}
   */
  async openHop(peerId, start, end, { session, hold } = {}) {
    const client = this.client;
    const hop = new Hop(client, peerId, start, end, await client.rpc(peerId), session);
    /** @type {{[key: string]: string | number}} */
    const meta = { model: client.model, start: hop.start, end: hop.end, batch: this.batch, max_length: this.maxLength };
    const tokens = this.batch * this.maxLength;
    if (hold === undefined) {
      [hold] = await client.exchange.writeHolds([{ server: peerId, session: hop.session, model: client.model, start: hop.start, end: hop.end, tokens }]);
    }
    // the peer gets our log up to the hold: pushed, or carried by OPEN to a peer that takes it
    const carried = hold === null ? null : await client.exchange.deliver(hop.rpc);
    if (hold !== null) meta.hold = hold;
    const openTimeoutMs = Math.min(client.config.openTimeoutMs, client.config.requestTimeoutMs);
    await client.exchange.open(hop.rpc, { type: FrameType.OPEN, session: hop.session, step: 0, meta }, carried, openTimeoutMs);
    return hop;
  }

  /**
   * `peerId` failed this generation: banned, and counted against `maxFailovers` (MeshError beyond).
   * @param {string} peerId
   * @param {unknown} err
   */
  noteFailure(peerId, err) {
    this.failovers++;
    this.lastFailure = `peer ${peerId.slice(0, 16)}: ${err instanceof Error ? `${err.name}: ${err.message}` : err}`;
    this.client.noteFailure(peerId, err);
    if (this.failovers > this.client.config.maxFailovers) {
      throw new MeshError(`gave up after ${this.failovers} peer failures; last: ${this.lastFailure}`, { cause: err });
    }
  }

  /**
   * Feed new tokens (`ids` and `mask`: [batch, seq] flattened) and return the logits of the last one,
   * [batch, 1, vocab]. Steps run one after another.
   * @param {BigInt64Array} ids
   * @param {BigInt64Array} mask
   * @returns {Promise<Hidden>}
   */
  step(ids, mask) {
    const run = this.queue.then(() => this.#step(ids, mask));
    this.queue = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  /**
   * @param {BigInt64Array} ids
   * @param {BigInt64Array} mask
   */
  async #step(ids, mask) {
    if (this.closed) throw new MeshError('this session is closed');
    if (!(ids instanceof BigInt64Array) || !(mask instanceof BigInt64Array) || ids.length !== mask.length || ids.length === 0 || ids.length % this.batch) {
      throw new MeshError(`ids and mask must be BigInt64Arrays of the same [${this.batch}, seq] shape`);
    }
    if (mask.some((m) => m !== 0n && m !== 1n)) throw new MeshError('attention mask values must be 0 or 1');
    const seq = ids.length / this.batch;
    if (this.length + seq > this.maxLength) throw new MeshError(`the session's max_length ${this.maxLength} would be exceeded`);
    const positions = positionIdsFor(mask, this.batch, this.pastCounts);
    let hidden = await this.client.embed(ids, this.batch, positions);
    let index = 0;
    while (index < this.hops.length) {
      const hop = this.hops[index];
      let out;
      try {
        out = await hop.forward({ hidden, mask, positions });
      } catch (err) {
        if (!isHopFailure(err)) throw err;
        this.noteFailure(hop.peerId, err);
        await this.closeHop(hop);
        const replacement = await openRoute(this, hop.start, hop.end, hop.history);
        this.hops.splice(index, 1, ...replacement);
        continue;
      }
      hop.history.push({ hidden, mask, positions });
      hidden = out;
      index++;
    }
    this.length += seq;
    for (let b = 0; b < this.batch; b++) {
      for (let i = 0; i < seq; i++) this.pastCounts[b] += Number(mask[b * seq + i]);
    }
    const [batch, , width] = hidden.dims;
    const last = new Float32Array(batch * width);
    for (let b = 0; b < batch; b++) last.set(hidden.data.subarray((b * seq + seq - 1) * width, (b * seq + seq) * width), b * width);
    return this.client.head({ data: last, dims: [batch, 1, width] });
  }

  /**
   * Close the hop's session; unless `pay` is false (the peer lied in it), countersign and return the
   * receipt the peer proposes for it.
   * @param {Hop} hop
   * @param {{pay?: boolean}} [options]
   */
  async closeHop(hop, { pay = true } = {}) {
    if (hop.rpc.closed) return;
    const client = this.client;
    const timeout = client.config.closeTimeoutMs;
    try {
      const answer = await client.call(hop.rpc, { type: FrameType.CLOSE, session: hop.session, step: hop.nextStep }, timeout);
      if (!pay) {
        client.log.warn(`not countersigning the receipt of ${hop.peerId.slice(0, 8)}: it lied in this session`);
        return;
      }
      const terms = {
        server: hop.peerId,
        session: hop.session,
        step: hop.nextStep + 1,
        model: client.model,
        start: hop.start,
        end: hop.end,
        tokens: hop.tokens,
      };
      const recorded = await client.exchange.settle(hop.rpc, answer.meta, terms, timeout);
      if (recorded === null) return;
      client.receipts.push({ peerId: hop.peerId, recorded });
      // The receipt is in both logs: a good moment to exchange the rest, off the generation's path.
      client.gossipSoon(hop.peerId, hop.rpc);
    } catch (err) {
      // a failing peer, or a receipt the ledger refuses to sign: logged, and the generation stands
      if (!(err instanceof AI4AllError)) throw err;
      client.log.warn(`closing session on ${hop.peerId.slice(0, 8)}: ${err.name}: ${err.message}`);
    }
  }

  /**
   * Close every hop's session (receipts included), spot-checking those drawn first (after the last
   * token: no token waits for a check); later steps are refused.
   */
  async close() {
    if (this.closed) return;
    await this.queue;
    this.closed = true;
    await Promise.all(this.hops.map((h) => this.#finishHop(h)));
    // What the peers lack of our log (the receipts), pushed before our next OPEN there.
    for (const hop of this.hops) if (!hop.rpc.closed) this.client.exchange.pushSoon(hop.rpc);
  }

  /**
   * Spot-check the hop if drawn (`spot_check.js`), then close it, paying only a peer that was not caught
   * lying in this session (Python's `MeshSession._finish_hop`).
   * @param {Hop} hop
   */
  async #finishHop(hop) {
    const checks = this.client.spotChecks;
    let pay = true;
    if (checks !== null && this.client.config.verifyAnswers && hop.history.length > 0) {
      checks.stats.usedBlockTokens += hop.tokens * (hop.end - hop.start);
      if (checks.draw(hop.peerId)) {
        try {
          const verdict = await checks.check(this, hop);
          pay = verdict.liar !== hop.peerId;
        } catch (err) {
          if (!(err instanceof AI4AllError)) throw err;
          this.client.log.warn(`spot check of ${hop.peerId.slice(0, 8)} could not finish: ${err.name}: ${err.message}`);
        }
      }
    }
    await this.closeHop(hop, { pay });
  }
}

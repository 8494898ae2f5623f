// @ts-check
/**
 * Opening a generation's sessions along a route: every hop at once, then the replay in route order (the
 * mirror of `python_peer/route_open.py`).
 *
 * `openRoute` asks the client for the cheapest route over `[start, end)`, writes the holds that pay for
 * its hops together (`ClientExchange.writeHolds`: a chat opened at the same time writes its holds before
 * or after them, not between), then opens a session on each hop concurrently (`MeshSession.openHop`: the
 * link, our log pushed, OPEN), so opening a route costs about one hop's open rather than the sum of
 * them. If any hop fails to open (its peer cannot be reached, its link does not open, an ERROR or no
 * answer to OPEN), the sessions that did open on that route are closed, every peer that failed is
 * banned, and a new route is tried. A peer refusing our payment (though our own ledger held the price)
 * is such a failure too, and is not asked again while this route is opened: if the route needs it again
 * (no other peer covers its blocks), the generation ends with its refusal (MeshError), as it does when
 * our own ledger refuses a hold before any peer is asked.
 *
 * After a failover, what the failed hop was sent is replayed through the new route hop after hop, in
 * route order: each hop's replay input is the previous hop's output.
 */

import { FrameFlags, PaymentRequiredError } from '../protocol/wire.js';
import { MeshError, isHopFailure } from './errors.js';
import { concatInputs } from './hop.js';
import { NoRouteError } from './routing.js';

/** @typedef {import('./hop.js').Hop} Hop */
/** @typedef {import('./hop.js').StepInputs} StepInputs */
/** @typedef {import('./session.js').MeshSession} MeshSession */

/**
 * A payment refusal: our own ledger's (PaymentRequiredError) or a peer's (`payment_required`).
 * @param {unknown} err
 */
function refusedPayment(err) {
  return err instanceof PaymentRequiredError || /** @type {{code?: unknown}} */ (err)?.code === 'payment_required';
}

/** @param {unknown} err */
const messageOf = (err) => (err instanceof Error ? err.message : String(err));

/**
 * Sessions on a route over `[start, end)`, opened concurrently; `replay` (inputs to `start`) replayed
 * through them in route order.
 * @param {MeshSession} session
 * @param {number} start
 * @param {number} end
 * @param {StepInputs[]} replay
 * @returns {Promise<Hop[]>}
 */
export async function openRoute(session, start, end, replay) {
  const client = session.client;
  const tokens = session.batch * session.maxLength;
  /** @type {Map<string, unknown>} peers that refused our payment: not asked again */
  const refused = new Map();
  for (;;) {
    let route;
    try {
      route = await client.route(start, end, tokens);
    } catch (err) {
      if (!(err instanceof NoRouteError)) throw err;
      const why = session.lastFailure ? `; last failure: ${session.lastFailure}` : '';
      throw new MeshError(`${err.message}${why}`, { cause: err });
    }
    const again = route.find((c) => refused.has(c.peerId));
    if (again !== undefined) {
      // no other peer covers its blocks: the chat ends with its refusal
      const err = refused.get(again.peerId);
      throw new MeshError(`peer ${again.peerId.slice(0, 16)} refused to serve: ${messageOf(err)}`, { cause: err });
    }
    const ids = route.map(() => crypto.getRandomValues(new Uint8Array(16)));
    let holds;
    try {
      // before any peer is asked: our own ledger refuses holds our balance has no room for
      holds = await client.exchange.writeHolds(
        route.map((c, i) => ({ server: c.peerId, session: ids[i], model: client.model, start: c.start, end: c.end, tokens })),
      );
    } catch (err) {
      if (!refusedPayment(err)) throw err;
      throw new MeshError(`no peer would serve this route: our ledger refused to hold its price: ${messageOf(err)}`, { cause: err });
    }
    const results = await Promise.allSettled(route.map((c, i) => session.openHop(c.peerId, c.start, c.end, { session: ids[i], hold: holds[i] })));
    /** @type {Hop[]} */
    const hops = [];
    /** @type {[string, unknown][]} */
    const failed = [];
    results.forEach((r, i) => (r.status === 'fulfilled' ? hops.push(r.value) : failed.push([route[i].peerId, r.reason])));
    if (failed.length) {
      await closeAll(session, hops);
      for (const [peerId, err] of failed) {
        if (refusedPayment(err)) refused.set(peerId, err); // our ledger held the price: routed around
        else if (!isHopFailure(err)) throw err; // not the peer's doing (a bug, our ledger): not routed around
      }
      for (const [peerId, err] of failed) session.noteFailure(peerId, err);
      continue;
    }
    for (const hop of hops) {
      const spans = client.traffic.get(hop.peerId)?.spans;
      if (spans !== undefined && !spans.includes(`${hop.start}-${hop.end}`)) spans.push(`${hop.start}-${hop.end}`);
    }
    let current = hops[0].peerId;
    try {
      let inputs = concatInputs(replay);
      for (const hop of hops) {
        current = hop.peerId;
        if (inputs !== null) inputs = await replayTo(session, hop, inputs);
      }
      return hops;
    } catch (err) {
      await closeAll(session, hops); // before giving up too: the sessions opened are closed
      if (refusedPayment(err)) throw new MeshError(`peer ${current.slice(0, 16)} refused to serve: ${messageOf(err)}`, { cause: err });
      if (!isHopFailure(err)) throw err;
      session.noteFailure(current, err);
    }
  }
}

/**
 * Rebuild `hop`'s KV cache with `inputs`; the inputs of the next hop.
 * @param {MeshSession} session
 * @param {Hop} hop
 * @param {StepInputs} inputs
 * @returns {Promise<StepInputs>}
 */
async function replayTo(session, hop, inputs) {
  session.client.log.info(`replaying ${inputs.hidden.dims[1]} tokens to ${hop.peerId.slice(0, 8)} for blocks ${hop.start}-${hop.end}`);
  const out = await hop.forward(inputs, FrameFlags.REPLAY);
  hop.history.push(inputs);
  return { hidden: out, mask: inputs.mask, positions: inputs.positions };
}

/**
 * @param {MeshSession} session
 * @param {Hop[]} hops
 */
async function closeAll(session, hops) {
  await Promise.all(hops.map((h) => session.closeHop(h)));
}

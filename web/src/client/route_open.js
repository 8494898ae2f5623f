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
 * answer to OPEN), every peer that failed is banned and a new route is tried. A peer refusing our payment
 * (though our own ledger held the price) is such a failure too, and is not asked again while this route
 * is opened: if the route needs it again (no other peer covers its blocks), the generation ends with its
 * refusal (MeshError), as it does when our own ledger refuses a hold before any peer is asked.
 *
 * The sessions that did open on a failed try have run nothing, so they are kept as spares: a later try
 * whose route has a hop with the same peer and span takes the spare (same session, same hold) instead of
 * writing a new hold and opening a new session. Closing them would not give their holds back (a session
 * closed before any FORWARD has no receipt, so its hold binds our credit until it expires), and a client
 * retrying around a dead peer would run out of room for holds. A spare whose link has closed since is not
 * taken. The spares the returned route does not use are closed, and so is every spare when the
 * generation gives up.
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
 * Sessions on a route over `[start, end)`, opened concurrently (reusing the sessions of failed tries);
 * `replay` (inputs to `start`) replayed through them in route order.
 * @param {MeshSession} session
 * @param {number} start
 * @param {number} end
 * @param {StepInputs[]} replay
 * @returns {Promise<Hop[]>}
 */
export async function openRoute(session, start, end, replay) {
  /** @type {Hop[]} every session opened here and neither returned nor closed yet */
  const opened = [];
  try {
    const hops = await openAndReplay(session, start, end, replay, opened);
    forget(opened, hops);
    return hops;
  } finally {
    await closeAll(session, opened); // the spares left, or everything when giving up
  }
}

/**
 * Try routes until one opens and takes the replay; `opened` holds the sessions opened so far (spares
 * between tries: nothing run on them).
 * @param {MeshSession} session
 * @param {number} start
 * @param {number} end
 * @param {StepInputs[]} replay
 * @param {Hop[]} opened
 * @returns {Promise<Hop[]>}
 */
async function openAndReplay(session, start, end, replay, opened) {
  const client = session.client;
  /** @type {Map<string, unknown>} peers that refused our payment: not asked again */
  const refused = new Map();
  for (;;) {
    let route;
    try {
      route = await client.route(start, end, session.batch * session.maxLength);
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
    const spares = route.map((c) => spareFor(opened, c));
    const results = await openNew(session, route.filter((c, i) => spares[i] === null), opened);
    /** @type {Hop[]} */
    const hops = [];
    /** @type {[string, unknown][]} */
    const failed = [];
    route.forEach((c, i) => {
      const r = spares[i] ?? results.shift();
      if (r === undefined || r === null) throw new Error('a route hop with neither a spare nor an open');
      if (r.status === 'fulfilled') hops.push(r.value);
      else failed.push([c.peerId, r.reason]);
    });
    if (failed.length) {
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
    /** @type {Hop[]} sent replay input, so their KV caches hold it: not spares */
    const fed = [];
    try {
      let inputs = concatInputs(replay);
      if (inputs !== null) {
        for (const hop of hops) {
          fed.push(hop);
          inputs = await replayTo(session, hop, inputs);
        }
      }
      return hops;
    } catch (err) {
      forget(opened, fed);
      await closeAll(session, fed);
      const current = fed.at(-1)?.peerId;
      if (current === undefined) throw err;
      if (refusedPayment(err)) throw new MeshError(`peer ${current.slice(0, 16)} refused to serve: ${messageOf(err)}`, { cause: err });
      if (!isHopFailure(err)) throw err;
      session.noteFailure(current, err);
    }
  }
}

/**
 * A new session on each hop of `route` (holds paying for them written together), at once: each the hop
 * or what its open raised; the ones that opened are added to `opened`.
 * @param {MeshSession} session
 * @param {import('./routing.js').Candidate[]} route
 * @param {Hop[]} opened
 * @returns {Promise<PromiseSettledResult<Hop>[]>}
 */
async function openNew(session, route, opened) {
  if (!route.length) return [];
  const client = session.client;
  const tokens = session.batch * session.maxLength;
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
  for (const r of results) if (r.status === 'fulfilled') opened.push(r.value);
  return results;
}

/**
 * A session opened on an earlier try for `hop`'s peer and span whose link is still open, as a settled
 * open; null if none.
 * @param {Hop[]} opened
 * @param {{peerId: string, start: number, end: number}} hop
 * @returns {PromiseFulfilledResult<Hop> | null}
 */
function spareFor(opened, hop) {
  const spare = opened.find((h) => h.peerId === hop.peerId && h.start === hop.start && h.end === hop.end && !h.rpc.closed);
  return spare === undefined ? null : { status: 'fulfilled', value: spare };
}

/**
 * Drop `hops` (these very objects) from `opened`.
 * @param {Hop[]} opened
 * @param {Hop[]} hops
 */
function forget(opened, hops) {
  const gone = new Set(hops);
  opened.splice(0, opened.length, ...opened.filter((h) => !gone.has(h)));
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

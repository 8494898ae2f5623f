// @ts-check
/**
 * The mesh client's errors, and which errors count as a hop failing (routed around).
 */

import { AI4AllError, RemoteError, WireError } from '../protocol/wire.js';
import { LinkClosedError, TransportError } from '../transport/peer.js';

/** Generation through the mesh could not go on (no route left, too many failures, refused). */
export class MeshError extends AI4AllError {}

/** A peer answered with something unusable (Python's PeerError on the client): routed around. */
export class BadAnswerError extends AI4AllError {}

/**
 * What counts as a hop failing: the client routes around these; anything else is a bug and propagates.
 * @param {unknown} err
 */
export function isHopFailure(err) {
  return (
    err instanceof LinkClosedError ||
    err instanceof TransportError ||
    err instanceof RemoteError ||
    err instanceof WireError ||
    err instanceof BadAnswerError
  );
}

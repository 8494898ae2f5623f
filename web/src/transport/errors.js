// @ts-check
/**
 * The transport's errors, all `CoreError`s (web/src/protocol/wire.js draws the hierarchy):
 *
 *     CoreError
 *     ├── SignalPayloadError   a signaling payload that is malformed, of another kind, or refused
 *     ├── LinkClosedError      the link is closed (sends and pings on it fail)
 *     └── TransportError       the manager is closed or full, an offer cannot be made or delivered
 *         └── LinkTimeoutError no answer came, the channel did not open, or no PONG came back in time
 */

import { CoreError } from '../protocol/wire.js';

/** A signaling payload that is malformed, of another kind, or refused. */
export class SignalPayloadError extends CoreError {}

/** The link is closed, or the manager refuses a new one. */
export class LinkClosedError extends CoreError {}

/** The manager is closed or full. */
export class TransportError extends CoreError {}

/** No answer came, the data channel did not open, or no PONG came back in time. */
export class LinkTimeoutError extends TransportError {}

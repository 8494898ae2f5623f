// @ts-check
/**
 * The codec's errors, named and coded as in `python_peer/core/errors.py`::
 *
 *     AI4AllError
 *     └── CoreError
 *         ├── WireError (code "bad_frame")      bytes that are not a valid frame or chunk
 *         │   ├── TruncatedFrameError
 *         │   ├── FrameHeaderError
 *         │   │   ├── BadMagicError, UnsupportedVersionError
 *         │   │   └── UnknownFrameTypeError, UnknownFlagsError
 *         │   ├── FrameLayoutError
 *         │   ├── LimitExceededError
 *         │   ├── MetadataError
 *         │   │   └── DuplicateTensorError
 *         │   ├── TensorError (code "bad_shape")
 *         │   │   └── NonFiniteError (code "non_finite")
 *         │   └── ChunkError
 *         └── RemoteError (code from the ERROR frame) and one subclass per ErrorCode
 *
 * Only the `code` travels between peers: it is what both codecs must agree on. The other layers hang
 * their errors under the same roots: `identity/identity.js` (CanonicalError, IdentityError >
 * SignatureError), `signaling/messages.js` (SignalingError and its subclasses),
 * `transport/peer.js` (LinkClosedError, TransportError > LinkTimeoutError), `client/routing.js`
 * (NoRouteError) and `client/generate.js` (GenerationError).
 * Misuse of the API that Python answers with ValueError or TypeError (a message id out of range, data
 * that is not bytes) throws RangeError or TypeError here.
 */

import { ErrorCode } from './constants.js';

/** Root of every AI4All error that carries a message meant for a user. */
export class AI4AllError extends Error {
  /**
   * @param {string} [message]
   * @param {ErrorOptions} [options]
   */
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name; // the Python class name; plain ES modules keep class names
  }
}

/** Base class of every error of the core (the wire codec here). */
export class CoreError extends AI4AllError {}

/** Bytes from a peer are not a valid frame or chunk; `code` is what a peer sends back for it. */
export class WireError extends CoreError {
  /** @type {string} */
  static code = ErrorCode.BAD_FRAME;

  /** @returns {string} the error code a peer puts in the ERROR frame it sends back */
  get code() {
    return /** @type {typeof WireError} */ (this.constructor).code;
  }
}

/** The bytes end before the fixed header, or before the lengths the header declares. */
export class TruncatedFrameError extends WireError {}
/** A header field holds a value this version of the wire format does not know. */
export class FrameHeaderError extends WireError {}
/** The bytes do not start with the frame magic: not an AI4All frame at all. */
export class BadMagicError extends FrameHeaderError {}
/** The frame uses another wire version; the peers must upgrade to talk. */
export class UnsupportedVersionError extends FrameHeaderError {}
/** The frame type number is not one this version defines. */
export class UnknownFrameTypeError extends FrameHeaderError {}
/** Flag bits are set that this version does not define. */
export class UnknownFlagsError extends FrameHeaderError {}
/** Declared lengths, offsets or padding disagree with the bytes actually present. */
export class FrameLayoutError extends WireError {}
/** A frame, its metadata, its tensor count or rank, or a reassembly buffer is over its bound. */
export class LimitExceededError extends WireError {}
/** The metadata is not canonical UTF-8 JSON of an object holding only values the format allows. */
export class MetadataError extends WireError {}
/** Two tensors in one frame have the same name. */
export class DuplicateTensorError extends MetadataError {}
/** A tensor's dtype is unknown, a dim is negative or too large, or shape and byte length disagree. */
export class TensorError extends WireError {
  /** @type {string} */
  static code = ErrorCode.BAD_SHAPE;
}
/** A floating point tensor holds NaN or Inf. */
export class NonFiniteError extends TensorError {
  static code = ErrorCode.NON_FINITE;
}
/** A data channel chunk is malformed, or disagrees with the other chunks of its message. */
export class ChunkError extends WireError {}

/** A peer answered with an ERROR frame: `code` says why, the message is the peer's own words. */
export class RemoteError extends CoreError {
  /** @type {string} */
  static code = ErrorCode.INTERNAL;

  /**
   * @param {string} message
   * @param {{code?: string}} [options] the code from the ERROR frame, when not the class's own
   */
  constructor(message, { code } = {}) {
    super(message);
    /** @type {string} */
    this.code = code ?? /** @type {typeof RemoteError} */ (new.target).code;
  }
}

/** bad_frame: the peer could not decode a frame we sent. */
export class RemoteBadFrameError extends RemoteError {
  static code = ErrorCode.BAD_FRAME;
}
/** bad_shape: the peer refused a tensor we sent for its dtype or shape. */
export class RemoteBadShapeError extends RemoteError {
  static code = ErrorCode.BAD_SHAPE;
}
/** non_finite: the peer found NaN or Inf in a tensor we sent. */
export class RemoteNonFiniteError extends RemoteError {
  static code = ErrorCode.NON_FINITE;
}
/** The peer holds no session with that id: it restarted, or the session expired. */
export class UnknownSessionError extends RemoteError {
  static code = ErrorCode.UNKNOWN_SESSION;
}
/** A step reached the peer before the step it expected. */
export class OutOfOrderError extends RemoteError {
  static code = ErrorCode.OUT_OF_ORDER;
}
/** The peer will not open the session (wrong model or span, bad parameters, or a ban). */
export class SessionRefusedError extends RemoteError {
  static code = ErrorCode.SESSION_REFUSED;
}
/** The peer has no compute or KV-cache room now; route around it. */
export class OverloadedError extends RemoteError {
  static code = ErrorCode.OVERLOADED;
}
/** The peer failed while running the step; the failure is on its side. */
export class RemoteInternalError extends RemoteError {
  static code = ErrorCode.INTERNAL;
}
/** The peer gave up waiting (for the next step, or for a peer further down the chain). */
export class RemoteTimeoutError extends RemoteError {
  static code = ErrorCode.TIMEOUT;
}
/** The caller's ledger balance does not cover the request. */
export class PaymentRequiredError extends RemoteError {
  static code = ErrorCode.PAYMENT_REQUIRED;
}

/** @type {Readonly<Record<string, typeof RemoteError>>} */
export const REMOTE_ERRORS = Object.freeze({
  [ErrorCode.BAD_FRAME]: RemoteBadFrameError,
  [ErrorCode.BAD_SHAPE]: RemoteBadShapeError,
  [ErrorCode.NON_FINITE]: RemoteNonFiniteError,
  [ErrorCode.UNKNOWN_SESSION]: UnknownSessionError,
  [ErrorCode.OUT_OF_ORDER]: OutOfOrderError,
  [ErrorCode.SESSION_REFUSED]: SessionRefusedError,
  [ErrorCode.OVERLOADED]: OverloadedError,
  [ErrorCode.INTERNAL]: RemoteInternalError,
  [ErrorCode.TIMEOUT]: RemoteTimeoutError,
  [ErrorCode.PAYMENT_REQUIRED]: PaymentRequiredError,
});

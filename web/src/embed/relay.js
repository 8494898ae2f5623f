// @ts-check
/**
 * The transport relay of the embedded node (docs/browser.md, "embed.js"): Chromium gives Web Workers
 * no `RTCPeerConnection`, so the node runs in a worker and its WebRTC links live on the page.
 *
 * - `RelayTransport` (worker side) has the interface of `BrowserTransport` (web/src/transport/peer.js):
 *   `new RelayTransport(port, {sendSignal, onFrame, onLinkOpen, onLinkClosed, config})`,
 *   `handleSignal(signal)`, `links` (each with `remoteId`, `linkId`, `state`, `send(frame)`,
 *   `close(reason)`, `waitOpen()`), `close()`. A `BrowserNode` takes it through its `createTransport`.
 * - The worker's `hello` carries its transport config (`cloneableConfig`): the page configuration's ICE
 *   settings (`iceServers`, `remoteAddresses`, `localAddress`, from `transportConfigFor` in the worker's
 *   BrowserNode), which the page's `BrowserTransport` checks again; a malformed one is dropped.
 * - `RelayHost` (page side) owns the real `BrowserTransport`, answers offers, and relays: signals the
 *   worker verified go to `handleSignal`, answers go back through the worker's signal client, frames
 *   cross in both directions as encoded bytes whose ArrayBuffer is transferred (one copy, and every
 *   frame is validated again by `decodeFrame` on the receiving side).
 *
 * The two halves talk over one `MessagePort` (a `MessageChannel` the page makes; port2 goes to the
 * worker). Every message is `{t: <type>, ...}`; anything malformed, oversized or of an unknown type is
 * dropped with a warning, and a request that fails is answered with the error's name and message.
 *
 * Bounds: at most `maxPending` requests of each type wait for the other side (handle-signal from the
 * worker, send-signal from the page), at most `maxSendsPerLink` sends per link wait for the page, and at most `maxQueuedFrames`
 * frames / `maxQueuedBytes` bytes wait for the worker to take them; past the last bound a request frame
 * is answered on its link with ERROR `overloaded` (the client routes around this peer), never queued.
 *
 * A dead worker: while a transport exists, the host pings every `heartbeatMs`; when nothing has been
 * heard from the worker for `deadAfterMs` it closes every link (so clients fail over at once), refuses
 * everything after, and calls `onDead(reason)`. Nothing here touches the DOM.
 *
 * Files (every public name is importable from this module):
 *
 * - `relay_port.js`: the MessagePort's messages, requests and limits (`Endpoint`, `RELAY_DEFAULTS`).
 * - `relay_worker.js`: `RelayTransport` and `RelayLink`, the worker's half.
 * - `relay_host.js`: `RelayHost`, the page's half: the real links, the bounded queue, the heartbeat.
 */

export { RELAY_DEFAULTS, RELAY_VERSION } from './relay_port.js';
export { RelayLink, RelayTransport } from './relay_worker.js';
export { RelayHost } from './relay_host.js';

/** @typedef {import('./relay_port.js').RelayLimits} RelayLimits */
/** @typedef {import('./relay_port.js').Log} Log */

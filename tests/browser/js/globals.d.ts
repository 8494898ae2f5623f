// The globals the page scripts share on a test page: each test module's setup script installs its own
// (the modules it imported, a registry of open objects), and later scripts of that module use them.
// `any`: they hold whole ES modules of web/src, whose own files carry their types.

/** wire_vectors/setup.js: the codec (`T.wire`) and base64/hex helpers. */
declare var T: any;
/** signaling_js/setup.js: web/src/signaling/client.js. */
declare var S: any;
/** signaling_js/setup.js: JS signal clients by name. */
declare var clients: Record<string, any>;
/** ice_config/setup.js: web/src/transport/peer.js, web/src/node/node.js, web/src/embed/relay.js. */
declare var P: any;
declare var N: any;
declare var R: any;
/** ice_config/setup.js: a logger that says nothing. */
declare var quiet: { info(...args: unknown[]): void; warn(...args: unknown[]): void };
/** ledger_js/setup.js: web/src/storage/db.js and web/src/ledger/ledger.js. */
declare var DB: any;
declare var LJ: any;
/** ledger_js: open BrowserLedgers by name. */
declare var ledgers: Record<string, any>;

interface Window {
  /** browser_peer/serve.js and browser_client/serve_all.js: the serving node and what it answered. */
  node: any;
  /** browser_client/setup.js: the mesh client, its identity, ledger and tokenizer, and `generate`. */
  t: any;
  /** browser_client/record_channels.js: every data channel message the page sent. */
  __channelSent: () => unknown[];
  /** node_pages/watch_csp.js: the CSP violations of the document. */
  __cspViolations: string[];
  /** pages/watch_reply.js: the reply's length at each change. */
  __lengths: number[];
  /** embed/fake_worker.js: a relay whose worker never takes a frame. */
  fakeWorker: any;
}

// @ts-check

/**
 * Installed once per page: the transport (`P`), node (`N`) and relay (`R`) modules and a quiet logger.
 */
async () => {
  window.P = await import('/web/src/transport/peer.js');
  window.N = await import('/web/src/node/node.js');
  window.R = await import('/web/src/embed/relay.js');
  window.quiet = { info() {}, warn() {} };
  return true;
};

// @ts-check

/**
 * Installed once per page: the signaling module as `S`, plus a registry of JS clients by name.
 */
async () => {
  window.S = await import('/web/src/signaling/client.js');
  window.clients = {};
  return true;
};

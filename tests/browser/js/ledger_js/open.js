// @ts-check

/**
 * Open a BrowserLedger in database `name` (`ledgers[name]`), with a grant mined at `bits` if asked.
 * @param {{ name: string, bits: number, claimGrant: boolean }} args
 */
async ({ name, bits, claimGrant }) => {
  const db = await DB.openDatabase(name);
  const identity = await DB.loadOrCreateIdentity(db);
  const t = performance.now();
  const ledger = await LJ.BrowserLedger.open({ db, identity, powBits: bits, coreUrl: '/py/python_peer/core/', claimGrant });
  ledgers[name] = ledger;
  return { peerId: ledger.peerId, timings: ledger.timings, openMs: performance.now() - t };
};

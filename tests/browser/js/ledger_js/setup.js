// @ts-check

/**
 * Installed once per page: the storage (`DB`) and ledger (`LJ`) modules and the `ledgers` registry.
 */
async () => {
  window.DB = await import('/web/src/storage/db.js');
  window.LJ = await import('/web/src/ledger/ledger.js');
  window.ledgers = window.ledgers ?? {};
  return true;
};

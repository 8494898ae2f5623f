// @ts-check

/**
 * Close the database under the ledger opened as `name`: every IndexedDB write now fails.
 * @param {string} name
 */
async (name) => {
  ledgers[name].db.close(); // every IndexedDB write now fails
};

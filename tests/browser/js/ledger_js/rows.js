// @ts-check

/**
 * The raw rows of the ledger opened as `name`, per object store.
 * @param {string} name
 */
async (name) => {
  const db = ledgers[name].db;
  const count = (store) => new Promise((resolve, reject) => {
    const request = db.transaction(store).objectStore(store).count();
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  return { entries: await count('entries'), evidence: await count('evidence') };
};

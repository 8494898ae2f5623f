// @ts-check

/**
 * Alter one byte of the cached shard `sha` in the contribute page's IndexedDB (the cache must notice).
 * @param {{ sha: string }} args
 */
async ({ sha }) => {
  const db = await new Promise((resolve, reject) => {
    const request = indexedDB.open('ai4all');
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  const tx = db.transaction('shard_bytes', 'readwrite');
  const store = tx.objectStore('shard_bytes');
  const bytes = await new Promise((resolve, reject) => {
    const request = store.get(sha);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
  if (bytes === undefined) return false;
  const copy = new Uint8Array(bytes);
  copy[copy.length >> 1] ^= 0xff;
  store.put(copy, sha);
  await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onerror = () => reject(tx.error); });
  db.close();
  return true;
};

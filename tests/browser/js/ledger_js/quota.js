// @ts-check

/**
 * Store a shard while IndexedDB refuses for quota: the cache's error.
 * @param {{ url: string, sha256: string, bytes: number, dbName: string }} args
 */
async ({ url, sha256, bytes, dbName }) => {
  const db = await DB.openDatabase(dbName);
  const warnings = [];
  const got = await DB.fetchShardCached(db, url, sha256, bytes, undefined, { log: { warn: (m) => warnings.push(m) } });
  let putError = null;
  try {
    await new DB.ShardCache(db).put(sha256, got, {});
  } catch (e) {
    putError = { name: e.name, code: e.code, message: e.message };
  }
  const cached = (await new DB.ShardCache(db).list()).length;
  db.close();
  return { size: got.length, warnings, putError, cached };
};

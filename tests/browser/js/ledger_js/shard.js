// @ts-check

/**
 * Fetch a shard through the cache twice: where each copy came from, and its bytes' hash.
 * @param {{ url: string, sha256: string, bytes: number, dbName: string }} args
 */
async ({ url, sha256, bytes, dbName }) => {
  const db = await DB.openDatabase(dbName);
  const progress = [];
  const got = await DB.fetchShardCached(db, url, sha256, bytes, (r, t) => progress.push([r, t]));
  const list = await new DB.ShardCache(db).list();
  db.close();
  return { size: got.length, progress: progress.at(-1), cached: list.map((s) => [s.sha256, s.size]) };
};

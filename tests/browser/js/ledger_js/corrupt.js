// @ts-check

/**
 * Alter one byte of the cached shard `sha256` in database `dbName`.
 * @param {{ sha256: string, dbName: string }} args
 */
async ({ sha256, dbName }) => {
  const db = await DB.openDatabase(dbName);
  const cache = new DB.ShardCache(db);
  const hit = await cache.get(sha256);
  hit.bytes[0] ^= 0xff;
  await cache.put(sha256, hit.bytes, hit.info.meta);
  db.close();
};

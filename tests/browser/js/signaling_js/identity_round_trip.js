// @ts-check

/**
 * An exported identity (JWK and PKCS8) imports to the same peer id and signs verifiably.
 */
async () => {
  const a = await S.Identity.generate();
  const out = [];
  for (const format of ['jwk', 'pkcs8']) {
    const b = await S.importIdentity(await a.exportIdentity(format));
    const bytes = new TextEncoder().encode('hello');
    await S.verify(a.peerId, bytes, await b.sign(bytes));
    out.push(b.peerId === a.peerId);
  }
  return out;
};

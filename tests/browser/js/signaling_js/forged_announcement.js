// @ts-check

/**
 * A lookup result with a tampered or re-signed-by-another-key body is dropped; the real one kept.
 */
async () => {
  const a = await S.Identity.generate();
  const b = await S.Identity.generate();
  const now = Date.now();
  const body = {v: 1, peer_id: a.peerId, kind: 'browser', seq: now, issued_ms: now, expires_ms: now + 60000,
    serves: [{model: 'smollm2-135m', start: 0, end: 4}], throughput_milli: 1, kv_free_tokens: 0,
    signaling: []};
  const sig = await a.signBody(S.ANNOUNCE_CONTEXT, body);
  const tampered = {...body, throughput_milli: 10 ** 9};
  const otherKey = await b.signBody(S.ANNOUNCE_CONTEXT, body);
  const items = [{body: tampered, sig}, {body, sig: otherKey}, {body, sig: 'zz'}, {body, sig}];
  const kept = await S.verifyPeers(items, 'smollm2-135m', 0, 4, {log: {warn() {}, info() {}}});
  let error = null;
  try { await S.verifyPeerItem({body: tampered, sig}, now); } catch (e) { error = e.name; }
  return {kept: kept.map((k) => k.throughput_milli), error};
};

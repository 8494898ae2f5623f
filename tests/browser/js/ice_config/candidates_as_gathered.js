// @ts-check

/**
 * A link with `loopback_only: false` keeps its candidates as gathered; with the default config the
 * same link's candidates are rewritten to 127.0.0.1.
 */
async () => {
  async function link(pageConfig) {
    const config = { ...P.transportConfigFor(pageConfig), log: quiet };
    const sdps = [];
    /** @type {any} */ let a; /** @type {any} */ let b;
    a = new P.BrowserTransport({ config, onFrame: () => {}, sendSignal: async (to, payload) => {
      sdps.push(payload.sdp); await b.handleSignal({ sender: 'a'.repeat(64), payload }); } });
    b = new P.BrowserTransport({ config, onFrame: () => {}, sendSignal: async (to, payload) => {
      sdps.push(payload.sdp); await a.handleSignal({ sender: 'b'.repeat(64), payload }); } });
    try {
      const opened = await a.connect('b'.repeat(64), { timeoutMs: 15000 });
      const rtt = await opened.ping(5000);
      const stats = [...(await opened.pc.getStats()).values()];
      const pair = stats.find((s) => s.type === 'candidate-pair' && s.state === 'succeeded' && s.nominated);
      const remote = pair && stats.find((s) => s.id === pair.remoteCandidateId);
      const candidates = sdps.map((sdp) => sdp.split(/\r?\n/).filter((l) => l.startsWith('a=candidate:')).map((l) => l.split(' ')[4]));
      return { ok: rtt >= 0, candidates, gathered: opened.gatheredCandidates.map((l) => l.split(' ')[4]), remote: remote?.address ?? null };
    } finally { a.close(); b.close(); }
  }
  return {
    any: await link({ ice: { servers: [], loopback_only: false } }),
    loopback: await link({}),
  };
};

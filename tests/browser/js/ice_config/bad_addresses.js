// @ts-check

/**
 * A BrowserTransport refuses bad ICE addresses and servers: one error line per case.
 */
() => {
  const hooks = { sendSignal: async () => {}, onFrame: () => {} };
  const out = [];
  for (const config of [{ iceServers: [{ urls: ['turn:a'] }] }, { localAddress: 'evil.example' },
                        { remoteAddresses: '127.0.0.1' }, { iceServers: null }]) {
    try { new P.BrowserTransport({ ...hooks, config: { ...config, log: quiet } }); out.push('accepted'); }
    catch (err) { out.push(`${err.name}: ${err.message}`); }
  }
  return out;
};

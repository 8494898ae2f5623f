// @ts-check

/**
 * A BrowserNode hands the page configuration's ICE settings to its transport.
 * @param {{ urls: string[], username?: string, credential?: string }[]} servers
 */
(servers) => {
  const base = { signal: ['ws://127.0.0.1:1'], models: [{ name: 'm', base: '/m/' }],
                 ledger: { pow_bits: 4 }, python_core: '/py/' };
  const old = new N.BrowserNode(base, { db: {}, log: quiet }).transportConfig;
  const any = new N.BrowserNode({ ...base, ice: { servers, loopback_only: false } }, { db: {}, log: quiet }).transportConfig;
  return { old, any };
};

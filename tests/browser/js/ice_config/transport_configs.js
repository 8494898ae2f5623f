// @ts-check

/**
 * `transportConfigFor` of several page configurations.
 * @param {{ urls: string[], username?: string, credential?: string }[]} servers
 */
(servers) => {
  const out = {};
  out.old = P.transportConfigFor({ signal: ['ws://x'] });
  out.loopback = P.transportConfigFor({ ice: { servers, loopback_only: true } });
  out.any = P.transportConfigFor({ ice: { servers: [], loopback_only: false } });
  out.single = P.transportConfigFor({ ice: { servers: [{ urls: 'stuns:s.example' }], loopback_only: false } });
  return out;
};

// @ts-check

/**
 * Whether the page is cross-origin isolated, and the Content-Type of each path.
 * @param {string[]} paths
 */
async (paths) => ({
  isolated: self.crossOriginIsolated,
  types: await Promise.all(paths.map(async (p) => {
    const r = await fetch(p);
    return [r.status, r.headers.get('content-type'), r.headers.get('cross-origin-embedder-policy')];
  })),
  missing: (await fetch('/web/no-such-file.js')).status,
  directory: (await fetch('/web/src/protocol/')).status,
});

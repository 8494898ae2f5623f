// @ts-check

/**
 * `chooseRoute` of web/src/client/routing.js on each case: the route, or the error it throws.
 * @param {{ candidates: object[], start: number, end: number, banned: string[], tokens: number }[]} cases
 */
async (cases) => {
  const { BanList, chooseRoute } = await import('/web/src/client/routing.js');
  return cases.map(({ candidates, start, end, banned, tokens }) => {
    const bans = new BanList(60);
    for (const peer of banned) bans.ban(peer);
    try {
      return chooseRoute(candidates, start, end, { banned: bans, tokensNeeded: tokens }).map((c) => [c.peerId, c.start, c.end]);
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
  });
};

// @ts-check

/**
 * What the page's links saw: Chromium's own candidates, link states, frames answered; the node's status.
 */
() => ({
  links: window.node.transport().links.map((l) => ({ state: l.state, gathered: l.gatheredCandidates, stats: l.stats })),
  answered: window.node.answered,
  refusedOffers: window.node.refused,
  status: window.node.node.status(),
});

// @ts-check

/**
 * Restart the host page's ticker (host_page.html): count, longest gap between ticks, last tick.
 */
() => {
  const t = /** @type {any} */ (window).ticker;
  t.count = 0;
  t.maxGapMs = 0;
  t.last = performance.now();
};

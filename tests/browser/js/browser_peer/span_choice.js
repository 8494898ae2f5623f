// @ts-check

/**
 * `leastServedSpan` of web/src/node/node.js on each case (announced spans, memory budget).
 * @param {{ manifest: object, cases: object[] }} args
 */
async ({ manifest, cases }) => {
  const { leastServedSpan } = await import('/web/src/node/node.js');
  return cases.map(({ announcements, budget }) => {
    try {
      return leastServedSpan(manifest, announcements, budget);
    } catch (err) {
      return { error: `${err.name}: ${err.message}` };
    }
  });
};

// @ts-check

/**
 * `transportConfigFor` and the relay refuse a malformed `ice`: the error of each.
 * @param {unknown} ice
 */
(ice) => {
  const results = [];
  const config = { signal: ['ws://127.0.0.1:1'], models: [{ name: 'm', base: '/m/' }],
                   ledger: { pow_bits: 4 }, python_core: '/py/', ice };
  try { P.transportConfigFor(config); results.push('accepted'); }
  catch (err) { results.push(`${err.name}: ${err.message}`); }
  try { new N.BrowserNode(config, { db: {}, log: quiet }); results.push('accepted'); }
  catch (err) { results.push(`${err.name}: ${err.message}`); }
  return results;
};

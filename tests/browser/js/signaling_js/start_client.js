// @ts-check

/**
 * A JS SignalClient `name` on `urls` announcing blocks [start, end); its peer id.
 * @param {[string, string[], number, number]} args
 */
async ([name, urls, start, end]) => {
  const identity = await S.Identity.generate();
  clients[name] = await S.SignalClient.create(identity, {
    urls, serves: [{model: 'smollm2-135m', start, end}], throughputMilli: 1000,
    backoffInitialMs: 50, backoffMaxMs: 500,
  });
  return clients[name].peerId;
};

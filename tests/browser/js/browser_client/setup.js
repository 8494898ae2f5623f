// @ts-check

/**
 * Identity and ledger from a fresh IndexedDB database, the tokenizer, and `window.t.generate`: greedy
 * generation through generate.js over a MeshClient, pausing before step `pauseAt` until `goOn()`.
 * @param {{ base: string, coreUrl: string, powBits: number, dbName: string, withLedger: boolean }} args
 */
async ({ base, coreUrl, powBits, dbName, withLedger }) => {
  const { openDatabase, loadOrCreateIdentity } = await import('/web/src/storage/db.js');
  const { BrowserLedger } = await import('/web/src/ledger/ledger.js');
  const { ModelTokenizer } = await import('/web/src/runtime/tokenizer.js');
  const { MeshClient } = await import('/web/src/client/mesh_client.js');
  const gen = await import('/web/src/client/generate.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const db = await openDatabase(dbName);
  const identity = await loadOrCreateIdentity(db);
  const ledger = withLedger ? await BrowserLedger.open({ db, identity, powBits, coreUrl }) : null;
  const tokenizer = await ModelTokenizer.load(base, manifest);
  const t = { identity, ledger, tokenizer, manifest, client: null, reached: false, goOn: null };
  t.connect = async (signalUrls, config) => {
    if (t.client !== null) await t.client.close();
    t.client = await MeshClient.connect({ identity, signalUrls, manifest, baseUrl: base, ledger, config,
      load: { runtime: { allowWebGPU: false, threads: 1 } } });
  };
  t.generate = async ({ messages, maxTokens, pauseAt = -1, stop = [] }) => {
    const client = t.client;
    const ids = tokenizer.encode(tokenizer.renderChat(messages));
    const routes = [];
    let failovers = 0;
    let steps = 0;
    t.reached = false;
    const pipeline = {
      open: async (batch, maxLength) => {
        const session = await client.open(batch, maxLength);
        routes.push(session.route);
        return {
          step: async (stepIds, mask) => {
            if (steps++ === pauseAt) {
              await new Promise((resolve) => { t.goOn = resolve; t.reached = true; });
            }
            return session.step(stepIds, mask);
          },
          close: async () => {
            routes.push(session.route);
            failovers = session.failovers;
            await session.close();
          },
        };
      },
    };
    const result = await gen.generate(pipeline, tokenizer, ids, gen.samplingParams({ maxTokens, stop }));
    return {
      ids, tokens: result.tokenIds, text: result.text, finish: result.finishReason, routes, failovers,
      receipts: client.receipts.splice(0), failures: client.failures.splice(0).map((f) => [f.peerId, f.error]),
      traffic: [...client.traffic.values()],
      own: ledger === null ? [] : (await ledger.log(identity.peerId, 200)).filter((e) => e.body.kind === 'receipt'),
    };
  };
  window.t = t;
  return identity.peerId;
};

// @ts-check

/**
 * Start a BrowserNode on the harness page; its transport counts what it answers. `window.node` keeps it.
 * @param {{ config: object, span: { start: number, end: number } | null, memoryBudgetMb: number, options: object }} args
 */
async ({ config, span, memoryBudgetMb, options }) => {
  const { openDatabase } = await import('/web/src/storage/db.js');
  const { BrowserNode } = await import('/web/src/node/node.js');
  const { BrowserTransport } = await import('/web/src/transport/peer.js');
  const answered = { frames: 0, errors: 0, opened: [] };
  let transport = null;
  const createTransport = (hooks) => {
    transport = new BrowserTransport({
      ...hooks,
      onFrame: (link, frame) => hooks.onFrame({
        remoteId: link.remoteId,
        send: (answer) => {
          answered.frames++;
          if (answer.type === 5) answered.errors++;
          return link.send(answer);
        },
      }, frame),
      onLinkOpen: async (link) => {
        hooks.onLinkOpen(link);
        const report = await link.pc.getStats();
        let pairId = null;
        report.forEach((r) => { if (r.type === 'transport' && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId; });
        const pair = pairId === null ? undefined : report.get(pairId);
        const address = (id) => (id === undefined ? null : report.get(id)?.address ?? null);
        answered.opened.push({ remote: link.remoteId, gathered: link.gatheredCandidates, pairRemote: address(pair?.remoteCandidateId) });
      },
    });
    return transport;
  };
  const refused = [];
  const log = { info: () => {}, warn: (m) => { if (m.startsWith('refused an offer')) refused.push(m); } };
  const db = await openDatabase('ai4all');
  const node = await BrowserNode.start(config, {
    db, span, memoryBudgetMb, runtime: { allowWebGPU: false, threads: 1 }, createTransport, log, ...options,
  });
  window.node = { node, answered, refused, transport: () => transport };
  return node.peerId;
};

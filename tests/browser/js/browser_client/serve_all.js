// @ts-check

/**
 * A BrowserNode on this page that serves every block of the model at `base`, announced on
 * `signalUrl`, signing its answers; `window.node.answered` counts the frames it answers.
 * @param {{ base: string, signalUrl: string }} args
 */
async ({ base, signalUrl }) => {
  const S = await import('/web/src/signaling/client.js');
  const { Identity } = await import('/web/src/identity/identity.js');
  const { BrowserTransport } = await import('/web/src/transport/peer.js');
  const { SpanServer } = await import('/web/src/node/span_server.js');
  const manifest = await (await fetch(base + 'manifest.json')).json();
  const identity = await Identity.generate(); // signs every answer, as a real node's does
  const server = await SpanServer.load(base, manifest, { start: 0, end: 4 }, { identity }, { runtime: { allowWebGPU: false, threads: 1 } });
  let client = null;
  const answered = { frames: 0, errors: 0 };
  const transport = new BrowserTransport({
    sendSignal: (peerId, payload) => client.sendSignal(peerId, payload),
    onFrame: (link, frame) => {
      server.handle(link.remoteId, frame).then((answer) => {
        answered.frames++;
        if (answer.type === 5) answered.errors++;
        return link.send(answer);
      }).catch((err) => console.warn(`answer not sent: ${err.message}`));
    },
    onLinkClosed: (link) => server.closeClient(link.remoteId),
  });
  client = await S.SignalClient.create(identity, {
    urls: [signalUrl],
    serves: [{ model: manifest.model.name, start: 0, end: 4 }],
    kvFreeTokens: server.kvFreeTokens,
    throughputMilli: 1_000_000,
    onSignal: (signal) => {
      if (signal.payload.kind === 'webrtc') transport.handleSignal(signal).catch((err) => console.warn(err.message));
    },
  });
  window.node = { client, server, answered };
  return client.peerId;
};

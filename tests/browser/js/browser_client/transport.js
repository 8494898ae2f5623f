// @ts-check

/**
 * Two BrowserTransports in this page linked to each other: frames both ways, big ones chunked,
 * backpressure, bad input refused; returns what each side saw.
 */
async () => {
  const P = await import('/web/src/transport/peer.js');
  const W = await import('/web/src/protocol/wire.js');
  const idA = 'a'.repeat(64);
  const idB = 'b'.repeat(64);
  const signalErrors = [];
  let answers = [];
  const deliver = (to, sender) => (peer, payload) => {
    if (payload.type === 'answer') answers.push(payload);
    setTimeout(() => to().handleSignal({ sender, payload }).catch((e) => signalErrors.push(`${e.name}: ${e.message}`)), 0);
    return Promise.resolve();
  };
  const b = new P.BrowserTransport({
    sendSignal: deliver(() => a, idB),
    onFrame: (link, frame) => {
      link.send(W.makeFrame({ type: W.FrameType.RESULT, session: frame.session, step: frame.step,
        meta: { echo: frame.meta, bytes: frame.tensors.reduce((n, t) => n + t.data.byteLength, 0) } }));
    },
  });
  const got = [];
  const a = new P.BrowserTransport({ sendSignal: deliver(() => b, idA), onFrame: (link, frame) => got.push(frame) });
  const out = {};
  const link = await a.connect(idB, { timeoutMs: 10000 });
  out.state = link.state;
  out.initiator = link.initiator;
  out.remoteInitiator = b.links.map((l) => l.initiator);
  out.rtt = await link.ping(3000);
  out.rttMs = link.rttMs;
  const big = new Float32Array(100000).fill(0.5); // 400 KB: 25 chunks
  const sentBytes = await link.send({ type: W.FrameType.FORWARD, session: new Uint8Array(16).fill(7), step: 3,
    meta: { hello: 'world' }, tensors: [{ name: 'x', dtype: 'float32', shape: [100000], data: big }] });
  while (got.length < 1) await new Promise((r) => setTimeout(r, 10));
  out.sentBytes = sentBytes;
  out.echo = { type: got[0].type, step: got[0].step, meta: got[0].meta };
  const caught = async (promise) => { try { await promise; return 'no error'; } catch (e) { return `${e.name}: ${e.message}`; } };
  // an answer for a link nobody waits for, and the same answer again
  out.stray = await caught(a.handleSignal({ sender: idB, payload: { ...answers[0], link: 'nobody-waits' } }));
  out.repeated = await caught(a.handleSignal({ sender: idB, payload: answers[0] }));
  out.badKind = await caught(a.handleSignal({ sender: idB, payload: { kind: 'x', type: 'answer', sdp: 'v=0', link: 'l' } }));
  out.badPeer = await caught(a.connect(''));
  // nobody answers: the offer goes nowhere
  const silent = new P.BrowserTransport({ sendSignal: async () => {}, onFrame: () => {} });
  const t0 = performance.now();
  out.silent = await caught(silent.connect(idB, { timeoutMs: 1500 }));
  out.silentMs = performance.now() - t0;
  out.silentLinks = silent.links.length;
  // the offer cannot be delivered (signaling refused it)
  const refused = new P.BrowserTransport({ sendSignal: async () => { throw new Error('unknown_peer: not connected here'); }, onFrame: () => {} });
  out.refused = await caught(refused.connect(idB, { timeoutMs: 5000 }));
  out.refusedLinks = refused.links.length;
  // an unusable answer: the waiting connect fails at once, the link is gone
  /** @type {any} */
  let pending = null;
  const broken = new P.BrowserTransport({
    sendSignal: async (peer, payload) => { pending = payload; },
    onFrame: () => {},
  });
  const connecting = caught(broken.connect(idB, { timeoutMs: 5000 }));
  while (pending === null) await new Promise((r) => setTimeout(r, 10));
  out.unusable = await caught(broken.handleSignal({ sender: idB,
    payload: { kind: 'webrtc', type: 'answer', link: pending.link, sdp: 'v=0\r\nm=application 9 nonsense\r\n' } }));
  out.unusableConnect = await connecting;
  out.brokenLinks = broken.links.length;
  // the remote closes the link: this side sees it closed and its pings fail
  for (const remote of b.links) remote.close('remote went away');
  const t1 = performance.now();
  while (link.state !== 'closed' && performance.now() - t1 < 10000) await new Promise((r) => setTimeout(r, 20));
  out.closedState = link.state;
  out.pingAfterClose = await caught(link.ping(1000));
  out.signalErrors = signalErrors;
  a.close(); b.close();
  return out;
};

// @ts-check

/**
 * The embed relay's page side against a fake worker: each way a worker or a page message can be wrong,
 * and what the relay does about it; returns one result per check.
 * @param {string} nodeUrl
 */
async (nodeUrl) => {
  const relay = await import(`${nodeUrl}/web/src/embed/relay.js`);
  const wire = await import(`${nodeUrl}/web/src/protocol/wire.js`);
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const logger = () => {
    const warnings = [];
    return { warnings, info() {}, warn: (m) => warnings.push(String(m)) };
  };
  const outcome = (promise) => promise.then(
    (value) => ({ ok: true, value: value === undefined ? null : String(value) }),
    (err) => ({ ok: false, name: err.name, message: err.message }),
  );
  const peer = 'a'.repeat(64);
  const offer = { kind: 'webrtc', type: 'offer', sdp: 'v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n', link: 'q1' };
  const out = {};

  // Both halves over one channel, no WebRTC: errors cross with their class and message.
  {
    const ch = new MessageChannel();
    const hostLog = logger();
    const workerLog = logger();
    const frames = [];
    const host = new relay.RelayHost(ch.port1, { log: hostLog });
    const proxy = new relay.RelayTransport(ch.port2, { sendSignal: async () => {}, onFrame: (link, f) => frames.push([link.remoteId, f.type]) }, { log: workerLog });
    out.noSdpSection = await outcome(proxy.handleSignal({ sender: peer, payload: { ...offer, sdp: 'v=0' } }));
    out.notAnObject = await outcome(proxy.handleSignal({ sender: peer, payload: 'offer' }));
    // Malformed messages to the page: dropped with a warning; a forged reply reaches no request.
    ch.port2.postMessage(42);
    ch.port2.postMessage({ t: 'no-such-type' });
    ch.port2.postMessage({ t: 'send', id: 9999, link: 77, bytes: new ArrayBuffer(40) });
    ch.port2.postMessage({ t: 'hello', version: 99, config: {} });
    // ...and to the worker: a frame on a link the page never opened, undecodable bytes, a good frame.
    ch.port1.postMessage(null);
    ch.port1.postMessage({ t: 'frame', link: 5, remoteId: peer, linkId: 'L5', bytes: new ArrayBuffer(8) });
    ch.port1.postMessage({ t: 'link-open', link: 6, remoteId: peer, linkId: 'L6' });
    ch.port1.postMessage({ t: 'frame', link: 6, remoteId: peer, linkId: 'L6', bytes: new ArrayBuffer(8) });
    const good = wire.encodeFrame({ type: wire.FrameType.CLOSE, session: new Uint8Array(16).fill(7) });
    ch.port1.postMessage({ t: 'frame', link: 6, remoteId: peer, linkId: 'L6', bytes: good.slice().buffer });
    await sleep(200);
    const link6 = proxy.links.find((l) => l.handle === 6);
    out.link6 = link6 ? { state: link6.state, stats: link6.stats } : null;
    out.sendOnUnknown = await outcome(link6.send({ type: wire.FrameType.PING }));
    out.frames = frames;
    out.linkCount = proxy.links.length;
    out.hostWarnings = hostLog.warnings;
    out.workerWarnings = workerLog.warnings;
    proxy.close();
    out.afterClose = await outcome(proxy.handleSignal({ sender: peer, payload: offer }));
    out.linkAfterClose = link6.state;
    host.close();
  }

  // Bounds: a page that never answers; requests beyond maxPending fail at once, the rest time out.
  {
    const ch = new MessageChannel();
    const log = logger();
    const proxy = new relay.RelayTransport(ch.port2, { sendSignal: async () => {}, onFrame() {} }, {
      log, maxPending: 2, maxSendsPerLink: 2, requestTimeoutMs: 300,
    });
    const started = performance.now();
    out.bounded = await Promise.all([0, 1, 2].map(() => outcome(proxy.handleSignal({ sender: peer, payload: offer }))));
    out.boundedMs = performance.now() - started;
    const raw = new MessageChannel();
    const proxy2 = new relay.RelayTransport(raw.port2, { sendSignal: async () => {}, onFrame() {} }, { log, maxSendsPerLink: 2, requestTimeoutMs: 300 });
    raw.port1.postMessage({ t: 'link-open', link: 1, remoteId: peer, linkId: 'L1' });
    await sleep(50);
    out.sendsBounded = await Promise.all([0, 1, 2].map(() => outcome(proxy2.links[0].send({ type: wire.FrameType.PING }))));
    proxy.close();
    proxy2.close();
  }

  // Oversized frames: refused by the page's half, and by the worker's half before they cross.
  {
    const ch = new MessageChannel();
    const replies = [];
    ch.port2.onmessage = (e) => replies.push(e.data);
    const host = new relay.RelayHost(ch.port1, { log: logger(), maxMessageBytes: 1024 });
    ch.port2.postMessage({ t: 'hello', version: relay.RELAY_VERSION, config: {} });
    ch.port2.postMessage({ t: 'send', id: 1, link: 1, bytes: new ArrayBuffer(2048) });
    ch.port2.postMessage({ t: 'send', id: 2, link: 1, bytes: 'not bytes' });
    await sleep(100);
    out.pageOversized = replies.filter((m) => m.t === 'reply');
    host.close();

    const ch2 = new MessageChannel();
    const proxy = new relay.RelayTransport(ch2.port2, { sendSignal: async () => {}, onFrame() {} }, { log: logger(), maxMessageBytes: 1024 });
    ch2.port1.postMessage({ t: 'link-open', link: 1, remoteId: peer, linkId: 'L1' });
    await sleep(50);
    const big = { name: 'hidden_states', dtype: 'float32', shape: [1, 1, 512], data: new Float32Array(512) };
    out.workerOversized = await outcome(proxy.links[0].send({ type: wire.FrameType.RESULT, tensors: [big] }));
    proxy.close();
  }

  // A dead worker: silent after hello, it is declared dead; a live one (answering pings) is not.
  for (const live of [false, true]) {
    const ch = new MessageChannel();
    const log = logger();
    let dead = null;
    const began = performance.now();
    const host = new relay.RelayHost(ch.port1, {
      log, heartbeatMs: 50, deadAfterMs: 400, onDead: (reason) => { dead = { reason, afterMs: performance.now() - began }; },
    });
    const seen = [];
    if (live) {
      new relay.RelayTransport(ch.port2, { sendSignal: async () => {}, onFrame() {} }, { log: logger() });
    } else {
      ch.port2.onmessage = (e) => seen.push(e.data.t);
      ch.port2.postMessage({ t: 'hello', version: relay.RELAY_VERSION, config: {} });
    }
    await sleep(1000);
    out[live ? 'live' : 'dead'] = { dead, seen: [...new Set(seen)], warnings: log.warnings };
    host.close();
  }
  return out;
};

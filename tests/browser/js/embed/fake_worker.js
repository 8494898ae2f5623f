// @ts-check

/**
 * A page-side RelayHost whose "worker" speaks the protocol but never takes a frame (so the relay's queue
 * fills up), relaying offers it receives through a JS SignalClient; `silence()` makes it stop answering.
 * @param {{ nodeUrl: string, signalUrl: string }} args
 */
async ({ nodeUrl, signalUrl }) => {
  const relay = await import(`${nodeUrl}/web/src/embed/relay.js`);
  const S = await import(`${nodeUrl}/web/src/signaling/client.js`);
  const ch = new MessageChannel();
  const warnings = [];
  const state = { dead: null, framesToWorker: 0, alive: true, warnings };
  const host = new relay.RelayHost(ch.port1, {
    log: { info() {}, warn: (m) => warnings.push(String(m)) },
    maxQueuedFrames: 2, heartbeatMs: 100, deadAfterMs: 1500,
    onDead: (reason) => { state.dead = reason; },
  });
  const fake = ch.port2;
  let nextId = 1;
  let client = null;
  fake.onmessage = async (event) => {
    const m = event.data;
    if (!state.alive) return;
    if (m.t === 'ping') fake.postMessage({ t: 'pong', n: m.n });
    else if (m.t === 'frame') state.framesToWorker++; // never acknowledged
    else if (m.t === 'send-signal') {
      await client.sendSignal(m.peerId, m.payload);
      fake.postMessage({ t: 'reply', id: m.id, ok: true, value: null });
    }
  };
  fake.postMessage({ t: 'hello', version: relay.RELAY_VERSION, config: {} });
  client = await S.SignalClient.create(await S.Identity.generate(), {
    urls: [signalUrl],
    serves: [],
    onSignal: (signal) => {
      if (signal.payload.kind === 'webrtc') {
        fake.postMessage({ t: 'handle-signal', id: nextId++, sender: signal.sender, payload: signal.payload });
      }
    },
  });
  window.fakeWorker = {
    state,
    silence: () => { state.alive = false; },
    links: () => host.links.map((l) => l.state),
  };
  return client.peerId;
};

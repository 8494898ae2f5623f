// @ts-check

/**
 * Both sides of a link (the offering and answering RTCPeerConnection) and the embed relay's page side
 * carry the configured ICE servers.
 * @param {{ urls: string[], username?: string, credential?: string }[]} servers
 */
async (servers) => {
  const config = { ...P.transportConfigFor({ ice: { servers, loopback_only: true } }), log: quiet };
  const never = () => new Promise(() => {});
  // Offering: the link exists (with its pc) as soon as connect() starts.
  const offering = new P.BrowserTransport({ sendSignal: never, onFrame: () => {}, config });
  const pending = offering.connect('b'.repeat(64), { timeoutMs: 30000 }).catch((err) => err.name);
  const offered = offering.links[0].pc.getConfiguration().iceServers;
  offering.close();
  // Answering: an offer from a plain RTCPeerConnection (loopback candidates, as a native peer's).
  const source = new RTCPeerConnection();
  source.createDataChannel('ai4all');
  await source.setLocalDescription(await source.createOffer());
  const sdp = P.rewriteLocalCandidates(source.localDescription.sdp, '127.0.0.1').sdp;
  const answering = new P.BrowserTransport({ sendSignal: never, onFrame: () => {}, config });
  const answered = answering.handleSignal({ sender: 'c'.repeat(64), payload: { kind: 'webrtc', type: 'offer', sdp, link: 'l1' } }).catch((err) => err.name);
  const answeredServers = answering.links[0].pc.getConfiguration().iceServers;
  answering.close();
  // The embed relay: the worker's hello carries the servers to the page's BrowserTransport.
  const channel = new MessageChannel();
  const host = new R.RelayHost(channel.port1, { log: quiet });
  const worker = new R.RelayTransport(channel.port2, { sendSignal: never, onFrame: () => {}, config: { ...config } });
  const relayed = worker.handleSignal({ sender: 'd'.repeat(64), payload: { kind: 'webrtc', type: 'offer', sdp, link: 'l2' } }).catch((err) => err.name);
  for (let i = 0; i < 100 && host.links.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
  const relayedServers = host.links.length ? host.links[0].pc.getConfiguration().iceServers : null;
  worker.close();
  host.close?.();
  source.close();
  void pending, answered, relayed; // closed: they fail in their own time, nobody waits
  return { offered, answeredServers, relayedServers };
};

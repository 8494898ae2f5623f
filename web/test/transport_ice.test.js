// @ts-check
/**
 * ICE settings (web/src/transport/ice.js) in Node: loopback confinement of candidates in both
 * directions, and STUN/TURN servers checked as `ai4all signal --ice-server` checks them. The page and
 * relay wiring of the same settings is tests/browser/test_ice_config.py.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TransportError } from '../src/transport/errors.js';
import { LOOPBACK, checkIceConfig, checkIceServers, filterRemoteCandidates, rewriteLocalCandidates, transportConfigFor } from '../src/transport/ice.js';

const SDP = [
  'v=0',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel',
  'c=IN IP4 0.0.0.0',
  'a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host generation 0',
  'a=candidate:2 1 udp 2122260223 192.0.2.3 50000 typ host generation 0',
  'a=candidate:3 1 udp 2122194687 fd00::2 50001 typ host generation 0',
  'a=candidate:4 1 tcp 1518280447 192.0.2.2 9 typ host tcptype active generation 0',
  'a=candidate:5 1 udp 1685987071 198.51.100.7 50002 typ srflx raddr 192.0.2.2 rport 50000',
  'a=candidate:6 1 udp 2122260223 1f0c3a2e-aaaa.local 50003 typ host',
  'a=candidate:7 1 udp 2122260223 127.0.0.1 50004 typ host',
  '',
].join('\r\n');

const candidates = (/** @type {string} */ sdp) => sdp.split('\r\n').filter((line) => line.startsWith('a=candidate:'));

test('remote candidates outside the allowed addresses are dropped; null keeps them all', () => {
  const { sdp, dropped } = filterRemoteCandidates(SDP, [LOOPBACK]);
  assert.equal(dropped, 6);
  assert.deepEqual(candidates(sdp), ['a=candidate:7 1 udp 2122260223 127.0.0.1 50004 typ host']);
  assert.ok(sdp.includes('m=application') && sdp.endsWith('\r\n'));
  assert.deepEqual(filterRemoteCandidates(SDP, null), { sdp: SDP, dropped: 0 });
});

test('local UDP IPv4 host candidates are rewritten to loopback, once per port; the rest are left out', () => {
  const { sdp, kept } = rewriteLocalCandidates(SDP, LOOPBACK);
  assert.equal(kept, 2); // 192.0.2.2:50000 and 192.0.2.3:50000 become one; 127.0.0.1:50004 stays
  assert.deepEqual(candidates(sdp), [
    'a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0',
    'a=candidate:7 1 udp 2122260223 127.0.0.1 50004 typ host',
  ]);
  assert.ok(sdp.includes('c=IN IP4 127.0.0.1'));
  assert.deepEqual(rewriteLocalCandidates(SDP, null), { sdp: SDP, kept: 7 });
});

test('ICE servers: STUN and TURN URLs, TURN with credentials; anything else is a TransportError', () => {
  assert.deepEqual(checkIceServers([{ urls: 'stun:192.0.2.1:3478' }]), [{ urls: ['stun:192.0.2.1:3478'] }]);
  const turn = { urls: ['turn:192.0.2.2?transport=tcp'], username: 'mesh', credential: 'hunter2' };
  assert.deepEqual(checkIceServers([turn]), [turn]);
  for (const [servers, reason] of /** @type {[unknown, RegExp][]} */ ([
    ['stun:a', /must be a list of at most 16/],
    [Array(17).fill({ urls: 'stun:a' }), /must be a list of at most 16/],
    [[{ urls: ['http://a'] }], /is not a STUN or TURN URL/],
    [[{ urls: ['turn:a'] }], /needs a username and a credential/],
    [[{ urls: ['stun:a'], extra: 1 }], /unknown keys/],
  ])) {
    assert.throws(() => checkIceServers(servers), (err) => err instanceof TransportError && reason.test(err.message));
  }
});

test('a page configuration gives loopback confinement unless ice.loopback_only is false', () => {
  assert.deepEqual(transportConfigFor({}), { iceServers: [], remoteAddresses: [LOOPBACK], localAddress: LOOPBACK });
  assert.deepEqual(transportConfigFor({ ice: { servers: [], loopback_only: false } }), { iceServers: [], remoteAddresses: null, localAddress: null });
  assert.throws(() => transportConfigFor({ ice: { servers: [] } }), TransportError);
  assert.throws(() => checkIceConfig({ remoteAddresses: 'x', localAddress: null, iceServers: [] }), /remoteAddresses must be null or a list/);
  assert.throws(() => checkIceConfig({ remoteAddresses: null, localAddress: '::1', iceServers: [] }), /localAddress must be null or an IPv4/);
});

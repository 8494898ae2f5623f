// @ts-check
/**
 * ICE settings of the browser's links (docs/browser.md, "Page configuration"): STUN/TURN servers
 * checked as `ai4all signal --ice-server` checks them, and loopback confinement by rewriting SDP.
 *
 * - Loopback only by default: remote candidates on any address but 127.0.0.1 are dropped from an
 *   offer or answer (`filterRemoteCandidates`), and this side's host candidates are rewritten to
 *   127.0.0.1 (`rewriteLocalCandidates`: Chromium gathers on the machine's interfaces, never on
 *   loopback, but it receives on all of them: with mDNS hiding off, Chromium 156 offers e.g. `192.0.2.2`
 *   and `fd00::2` host candidates on sockets bound to 0.0.0.0 and [::], so `127.0.0.1:<same port>`
 *   reaches it; tests/browser/test_browser_peer.py checks the selected pair targets 127.0.0.1).
 *   Relayed, reflexive, TCP, IPv6 and mDNS candidates are left out, so no packet targets a
 *   non-loopback address.
 * - `remoteAddresses: null, localAddress: null` (a page config's `ice.loopback_only: false`) lifts
 *   both: every candidate is kept as gathered and as received.
 *
 * Pure functions over strings and plain objects: no RTCPeerConnection, no DOM.
 */

import { TransportError } from './errors.js';

export const LOOPBACK = '127.0.0.1';
const IPV4_RE = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/;
/** RFC 7064/7065 STUN and TURN URLs, as `ai4all signal --ice-server` checks them (python_peer/core/ice.py). */
export const ICE_URL_RE = /^(stuns?|turns?):[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::\d{1,5})?(?:\?transport=(?:udp|tcp))?$/;
export const MAX_ICE_SERVERS = 16;
const MAX_ICE_SECRET_CHARS = 512;
const MAX_ADDRESSES = 64;

/**
 * @param {unknown} value
 * @returns {value is {[key: string]: unknown}}
 */
function isPlainObject(value) {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** @param {unknown} value */
const shown = (value) => JSON.stringify(value)?.slice(0, 100) ?? String(value);

/**
 * Checked copies of STUN/TURN servers (`RTCIceServer`s): each `{urls, username?, credential?}` with
 * `urls` a STUN/TURN URL or a non-empty list of them; a turn:/turns: server needs a username and a
 * credential (1-512 printable characters). Throws TransportError on anything else.
 * @param {unknown} servers
 * @returns {RTCIceServer[]}
 */
export function checkIceServers(servers) {
  if (!Array.isArray(servers) || servers.length > MAX_ICE_SERVERS) {
    throw new TransportError(`ICE servers must be a list of at most ${MAX_ICE_SERVERS}, not ${shown(servers)}`);
  }
  return servers.map((server, i) => {
    if (!isPlainObject(server)) throw new TransportError(`ICE server ${i} is not an object: ${shown(server)}`);
    const extra = Object.keys(server).filter((k) => !['urls', 'username', 'credential'].includes(k));
    if (extra.length) throw new TransportError(`ICE server ${i} has unknown keys ${shown(extra)}`);
    const urls = typeof server.urls === 'string' ? [server.urls] : server.urls;
    if (!Array.isArray(urls) || urls.length < 1 || urls.length > MAX_ICE_SERVERS) {
      throw new TransportError(`ICE server ${i} needs urls: 1..${MAX_ICE_SERVERS} STUN/TURN URLs, not ${shown(server.urls)}`);
    }
    for (const url of urls) {
      if (typeof url !== 'string' || url.length > 300 || !ICE_URL_RE.test(url)) {
        throw new TransportError(
          `ICE server ${i}: ${shown(url)} is not a STUN or TURN URL (stun:HOST[:PORT], stuns:, turn:HOST[:PORT][?transport=udp|tcp], turns:)`,
        );
      }
    }
    /** @type {RTCIceServer} */
    const out = { urls: [...urls] };
    const turn = urls.some((url) => url.startsWith('turn'));
    for (const key of /** @type {const} */ (['username', 'credential'])) {
      const value = server[key];
      if (value === undefined || value === null) {
        if (turn) throw new TransportError(`ICE server ${i} (${urls[0]}) is a TURN server: it needs a username and a credential`);
        continue;
      }
      if (typeof value !== 'string' || value.length < 1 || value.length > MAX_ICE_SECRET_CHARS || !/^[\x21-\x7e][\x20-\x7e]*$/.test(value)) {
        throw new TransportError(`ICE server ${i}: ${key} must be 1-${MAX_ICE_SECRET_CHARS} printable characters`);
      }
      out[key] = value;
    }
    return out;
  });
}

/**
 * The ICE part of a BrowserTransport's config from a page configuration (docs/browser.md, "Page
 * configuration"): its `ice.servers`, and loopback confinement unless `ice.loopback_only` is false. A
 * configuration without `ice` (an older node) keeps the loopback defaults. Throws TransportError on a
 * malformed `ice`.
 * @param {{ice?: unknown}} pageConfig
 * @returns {{iceServers: RTCIceServer[], remoteAddresses: string[] | null, localAddress: string | null}}
 */
export function transportConfigFor(pageConfig) {
  const ice = pageConfig?.ice;
  if (ice === undefined) return { iceServers: [], remoteAddresses: [LOOPBACK], localAddress: LOOPBACK };
  if (!isPlainObject(ice) || typeof ice.loopback_only !== 'boolean') {
    throw new TransportError(`the page configuration's ice must be {servers: [...], loopback_only: true|false}, not ${shown(ice)}`);
  }
  const iceServers = checkIceServers(ice.servers);
  if (ice.loopback_only) return { iceServers, remoteAddresses: [LOOPBACK], localAddress: LOOPBACK };
  return { iceServers, remoteAddresses: null, localAddress: null };
}

/**
 * Check the address and server settings of a transport config (they may come from another context,
 * e.g. the embed worker's relay): throws TransportError, returns checked copies.
 * @param {{remoteAddresses: unknown, localAddress: unknown, iceServers: unknown}} config
 */
export function checkIceConfig({ remoteAddresses, localAddress, iceServers }) {
  const okList =
    remoteAddresses === null ||
    (Array.isArray(remoteAddresses) && remoteAddresses.length <= MAX_ADDRESSES && remoteAddresses.every((a) => typeof a === 'string' && a.length <= 64));
  if (!okList) throw new TransportError(`remoteAddresses must be null or a list of addresses, not ${shown(remoteAddresses)}`);
  if (localAddress !== null && !(typeof localAddress === 'string' && IPV4_RE.test(localAddress))) {
    throw new TransportError(`localAddress must be null or an IPv4 address, not ${shown(localAddress)}`);
  }
  return {
    remoteAddresses: remoteAddresses === null ? null : [.../** @type {string[]} */ (remoteAddresses)],
    localAddress: /** @type {string | null} */ (localAddress),
    iceServers: checkIceServers(iceServers),
  };
}

/**
 * Drop `a=candidate` lines whose address is not in `allowed` (mDNS names included).
 * @param {string} sdp
 * @param {readonly string[] | null} allowed
 * @returns {{sdp: string, dropped: number}}
 */
export function filterRemoteCandidates(sdp, allowed) {
  if (allowed === null) return { sdp, dropped: 0 };
  let dropped = 0;
  const kept = sdp.split(/\r?\n/).filter((line) => {
    if (!line.startsWith('a=candidate:')) return true;
    const parts = line.split(' ');
    const ok = parts.length >= 8 && allowed.includes(parts[4]);
    if (!ok) dropped++;
    return ok;
  });
  while (kept.length && kept[kept.length - 1] === '') kept.pop();
  return { sdp: `${kept.join('\r\n')}\r\n`, dropped };
}

/**
 * This side's SDP with only UDP IPv4 host candidates, their address rewritten to `address`, and the
 * connection lines pointed at it too; everything else (IPv6, mDNS, TCP, srflx, relay) is dropped.
 * @param {string} sdp
 * @param {string | null} address  null: keep the SDP as gathered
 * @returns {{sdp: string, kept: number}}
 */
export function rewriteLocalCandidates(sdp, address) {
  if (address === null) return { sdp, kept: sdp.split('\n').filter((l) => l.startsWith('a=candidate:')).length };
  let kept = 0;
  const seen = new Set();
  const lines = [];
  for (const line of sdp.split(/\r?\n/)) {
    if (line.startsWith('a=candidate:')) {
      const parts = line.split(' ');
      const isHostUdp = parts.length >= 8 && parts[2].toLowerCase() === 'udp' && parts[7] === 'host';
      if (!isHostUdp || !IPV4_RE.test(parts[4])) continue;
      parts[4] = address;
      const key = `${parts[1]} ${parts[4]} ${parts[5]}`; // component, address, port
      if (seen.has(key)) continue;
      seen.add(key);
      kept++;
      lines.push(parts.join(' '));
    } else if (line.startsWith('c=IN IP4 ')) {
      lines.push(`c=IN IP4 ${address}`);
    } else if (line.startsWith('a=rtcp:') && line.includes(' IN IP4 ')) {
      lines.push(line.replace(/ IN IP4 \S+/, ` IN IP4 ${address}`));
    } else {
      lines.push(line);
    }
  }
  while (lines.length && lines[lines.length - 1] === '') lines.pop();
  return { sdp: `${lines.join('\r\n')}\r\n`, kept };
}

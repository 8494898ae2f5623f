// @ts-check
/**
 * AI4All embed script (docs/browser.md, "embed.js"): one tag on any website,
 *
 *     <script src="https://NODE/embed.js" data-max-memory-mb="512" data-signal="wss://NODE/"></script>
 *
 * shows a small consent widget where the tag stands. Nothing runs and nothing is requested before the
 * visitor agrees: no fetch, no websocket, no module, no font or stylesheet (the widget's style is
 * built here, in a shadow root, so the host page's CSS neither reaches it nor is touched by it).
 * After consent the node runs in a Web Worker (web/src/embed/worker.js, started from a blob: module
 * worker that imports it from the node, as a script of another origin cannot be a Worker URL); the
 * page keeps only the WebRTC links (web/src/embed/relay.js: workers have no RTCPeerConnection). The
 * widget shows the node's state, span, tokens served and earnings, and Stop ends it: the node stops
 * (its signal client says bye, its links close), then the worker is terminated.
 *
 * Attributes: `data-max-memory-mb` (optional, default 512): a whole number of MB from 128 to 4096 that
 * bounds the shard weights and KV caches the node holds; `data-signal` (optional): the ws:// or wss://
 * URL of the signaling node to announce on; by default the node's own configuration (`/v1/config`)
 * lists it and its siblings. A bad value is shown in the widget and nothing can start.
 *
 * This is a classic script (loaded without type=module), and it stores nothing on the host page: the
 * only storage is the worker's IndexedDB (its identity, ledger and cached shards), which belongs to
 * the host page's origin. Consent is asked again on every visit.
 */
(() => {
  'use strict';

  const MIN_MEMORY_MB = 128; // as worker.js MIN_MEMORY_MB / MAX_MEMORY_MB
  const MAX_MEMORY_MB = 4096;
  const DEFAULT_MEMORY_MB = 512;
  const READY_TIMEOUT_MS = 60_000;
  const STOP_TIMEOUT_MS = 10_000;
  const RENDER_EVERY_MS = 250;
  const INSTANCE = Symbol.for('ai4all.embed');
  const TAG = 'ai4all-widget';

  const script = document.currentScript;
  if (!(script instanceof HTMLScriptElement) || !script.src) {
    console.error('AI4All: load embed.js with <script src="https://NODE/embed.js">; a copy cannot find its node');
    return;
  }
  const globals = /** @type {any} */ (window);
  if (globals[INSTANCE]) {
    console.warn('AI4All: embed.js is already on this page; this second tag does nothing');
    return;
  }
  globals[INSTANCE] = true;

  const scriptUrl = new URL(script.src, document.baseURI);
  const nodeRoot = new URL('./', scriptUrl); // embed.js is served at the node's root
  const workerUrl = new URL('web/src/embed/worker.js', nodeRoot).href;
  const relayUrl = new URL('web/src/embed/relay.js', nodeRoot).href;
  const settings = readSettings(script);

  // --- settings -------------------------------------------------------------------------------------

  /**
   * @param {HTMLScriptElement} tag
   * @returns {{memoryMb: number, signal: string | null, problems: string[]}}
   */
  function readSettings(tag) {
    const problems = [];
    let memoryMb = DEFAULT_MEMORY_MB;
    const memory = tag.getAttribute('data-max-memory-mb');
    if (memory !== null) {
      const text = memory.trim();
      const value = /^[0-9]{1,9}$/.test(text) ? Number(text) : NaN;
      if (!(value >= MIN_MEMORY_MB && value <= MAX_MEMORY_MB)) {
        problems.push(
          `data-max-memory-mb="${memory.slice(0, 40)}" must be a whole number of MB from ${MIN_MEMORY_MB} to ${MAX_MEMORY_MB}.`,
        );
      } else {
        memoryMb = value;
      }
    }
    let signal = null;
    const given = tag.getAttribute('data-signal');
    if (given !== null) {
      let url = null;
      try {
        url = new URL(given.trim());
      } catch {
        // reported below
      }
      const loopback = url !== null && ['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname);
      if (url === null || (url.protocol !== 'ws:' && url.protocol !== 'wss:') || url.username || url.password || url.hash || given.length > 2048) {
        problems.push(`data-signal="${given.slice(0, 80)}" must be a ws:// or wss:// URL.`);
      } else if (location.protocol === 'https:' && url.protocol === 'ws:' && !loopback) {
        problems.push(`data-signal="${given.slice(0, 80)}" must be wss:// on an https page (browsers block ws:// there).`);
      } else {
        signal = url.href;
      }
    }
    return { memoryMb, signal, problems };
  }

  // --- the widget -------------------------------------------------------------------------------------

  const CSS = `
:host { all: initial !important; display: block !important; margin: 8px 0 !important; }
.box { box-sizing: border-box; max-width: 360px; padding: 10px 12px; border: 1px solid #c9ced6;
  border-radius: 8px; background: #fff; color: #1d2330; font: 13px/1.4 system-ui, sans-serif; }
.title { margin: 0 0 4px; font-weight: 600; }
p { margin: 0 0 8px; }
.problem { color: #a61b1b; }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 0 0 8px; }
dt { color: #5a6273; }
dd { margin: 0; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }
.buttons { display: flex; gap: 8px; }
button { font: inherit; padding: 4px 10px; border-radius: 6px; border: 1px solid #8a93a3; background: #f3f5f8;
  color: inherit; cursor: pointer; }
button.primary { background: #1f5fd1; border-color: #1f5fd1; color: #fff; }
button:disabled { opacity: 0.6; cursor: default; }
[hidden] { display: none !important; }
`;

  /**
   * @param {string} tagName
   * @param {{[key: string]: string}} [attrs]
   * @param {(Node | string)[]} [children]
   */
  function el(tagName, attrs = {}, children = []) {
    const node = document.createElement(tagName);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }

  const hostElement = document.createElement(TAG);
  const shadow = hostElement.attachShadow({ mode: 'open' });
  try {
    const sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    shadow.adoptedStyleSheets = [sheet];
  } catch {
    shadow.append(el('style', {}, [CSS]));
  }
  const origin = nodeRoot.host;
  const messageEl = el('p', { id: 'ai4all-message' });
  const fields = {
    state: el('dd', { id: 'ai4all-state' }),
    span: el('dd', { id: 'ai4all-span' }),
    tokens: el('dd', { id: 'ai4all-tokens' }),
    earned: el('dd', { id: 'ai4all-earned' }),
    peers: el('dd', { id: 'ai4all-peers' }),
  };
  const statsEl = el('dl', { id: 'ai4all-stats' }, [
    el('dt', {}, ['State']), fields.state,
    el('dt', {}, ['Serving']), fields.span,
    el('dt', {}, ['Tokens served']), fields.tokens,
    el('dt', {}, ['Earned']), fields.earned,
    el('dt', {}, ['Clients']), fields.peers,
  ]);
  const startButton = el('button', { id: 'ai4all-start', type: 'button', class: 'primary' }, ['Contribute']);
  const dismissButton = el('button', { id: 'ai4all-dismiss', type: 'button' }, ['Not now']);
  const stopButton = /** @type {HTMLButtonElement} */ (el('button', { id: 'ai4all-stop', type: 'button' }, ['Stop']));
  shadow.append(
    el('div', { class: 'box', role: 'region', 'aria-label': 'AI4All' }, [
      el('p', { class: 'title' }, ['AI4All']),
      messageEl,
      statsEl,
      el('div', { class: 'buttons' }, [startButton, dismissButton, stopButton]),
    ]),
  );
  hostElement.dataset.state = 'ask';

  const askText =
    `Lend this computer's spare power to AI4All, a volunteer network that runs open language models? ` +
    `Nothing runs until you agree. Then a piece of a model is downloaded from ${origin} and served in the ` +
    `background with up to ${settings.memoryMb} MB of memory, until you press Stop or leave this page.`;

  /**
   * Show one of the widget's views.
   * @param {'ask' | 'invalid' | 'dismissed' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed'} view
   * @param {string} [text]
   */
  function show(view, text) {
    hostElement.dataset.state = view;
    const running = view === 'starting' || view === 'running' || view === 'stopping';
    messageEl.className = view === 'invalid' || view === 'failed' ? 'problem' : '';
    messageEl.textContent = text ?? '';
    statsEl.hidden = !(running || view === 'stopped' || view === 'failed') || !lastStatus;
    startButton.hidden = !(view === 'ask' || view === 'dismissed' || view === 'stopped' || view === 'failed');
    startButton.textContent = view === 'ask' ? 'Contribute' : view === 'dismissed' ? 'Contribute…' : 'Contribute again';
    dismissButton.hidden = view !== 'ask';
    stopButton.hidden = !running;
    stopButton.disabled = view === 'stopping';
  }

  // --- status ---------------------------------------------------------------------------------------

  /** @type {any} */
  let lastStatus = null;
  /** @type {ReturnType<typeof setTimeout> | null} */
  let renderTimer = null;

  /** @param {number} bytes */
  const mb = (bytes) => (bytes / 2 ** 20).toFixed(1);
  /** @param {unknown} n */
  const num = (n) => (typeof n === 'number' && Number.isFinite(n) ? n : 0);
  /** @param {unknown} units  ledger units: 1 credit = 1000 units */
  const credits = (units) => (typeof units === 'number' && Number.isFinite(units) ? (units / 1000).toFixed(3) : '–');

  function renderStatus() {
    renderTimer = null;
    const s = lastStatus;
    if (!s || typeof s !== 'object') return;
    const state = String(s.state);
    const download = s.download && typeof s.download === 'object' ? s.download : { loaded: 0, total: 0, cached: false };
    if (state === 'downloading' && num(download.total) > 0) {
      const pct = Math.floor((100 * num(download.loaded)) / num(download.total));
      fields.state.textContent = `downloading ${pct}% (${mb(num(download.loaded))} of ${mb(num(download.total))} MB)`;
    } else {
      fields.state.textContent = state + (s.error ? `: ${String(s.error).slice(0, 300)}` : '');
    }
    const span = s.span && typeof s.span === 'object' ? `blocks ${num(s.span.start)}-${num(s.span.end)}` : 'choosing a span';
    fields.span.textContent = `${span} of ${String(s.model ?? '?')}`;
    fields.tokens.textContent = `${num(s.tokensServed)} (${num(s.tokensPerSecond).toFixed(1)}/s)`;
    fields.earned.textContent = `${credits(s.earned)} credits (balance ${credits(s.balance)})`;
    const links = Array.isArray(s.peers) ? s.peers.length : 0;
    fields.peers.textContent = `${links} links, ${num(s.sessions)} sessions`;
    hostElement.dataset.nodeState = state;
    statsEl.hidden = false;
  }

  /** @param {unknown} status */
  function onStatus(status) {
    lastStatus = status;
    if (renderTimer === null) renderTimer = setTimeout(renderStatus, RENDER_EVERY_MS);
  }

  // --- the worker -----------------------------------------------------------------------------------

  /**
   * @typedef {object} Run
   * @property {Worker | null} worker
   * @property {any} host  the page's RelayHost
   * @property {string | null} blobUrl
   * @property {boolean} ready
   * @property {boolean} stopping
   * @property {ReturnType<typeof setTimeout> | null} readyTimer
   * @property {(() => void) | null} onStopped
   */

  /** @type {Run | null} */
  let run = null;

  /**
   * Release a run: links closed, worker terminated, blob URL revoked.
   * @param {Run} r
   * @param {string} reason
   */
  function teardown(r, reason) {
    if (r.readyTimer !== null) clearTimeout(r.readyTimer);
    try {
      r.host?.close(reason);
    } catch (err) {
      console.warn('AI4All: closing the links failed', err);
    }
    r.worker?.terminate();
    if (r.blobUrl !== null) URL.revokeObjectURL(r.blobUrl);
    r.blobUrl = null;
    if (run === r) run = null;
  }

  /**
   * The node cannot go on: say why, release everything.
   * @param {Run} r
   * @param {string} why
   */
  function fail(r, why) {
    if (run !== r) return;
    console.error(`AI4All: ${why}`);
    teardown(r, why);
    show('failed', `${why} Nothing runs now.`);
    r.onStopped?.(); // a Stop that was waiting for the node is over too
  }

  async function start() {
    if (run !== null || settings.problems.length) return;
    /** @type {Run} */
    const r = { worker: null, host: null, blobUrl: null, ready: false, stopping: false, readyTimer: null, onStopped: null };
    run = r;
    lastStatus = null;
    show('starting', `Starting: loading the node from ${origin}…`);
    let relay;
    try {
      relay = await import(relayUrl);
    } catch (err) {
      fail(r, `Could not load the node's code from ${origin} (${err instanceof Error ? err.message : err}).`);
      return;
    }
    if (run !== r) return; // stopped meanwhile
    const channel = new MessageChannel();
    try {
      const source = `import ${JSON.stringify(workerUrl)};\n`;
      r.blobUrl = URL.createObjectURL(new Blob([source], { type: 'text/javascript' }));
      r.worker = new Worker(r.blobUrl, { type: 'module', name: 'ai4all-node' });
    } catch (err) {
      fail(r, `This page does not allow the node's worker (${err instanceof Error ? err.message : err}); its Content-Security-Policy must allow blob: workers.`);
      return;
    }
    r.host = new relay.RelayHost(channel.port1, { onDead: (/** @type {string} */ reason) => fail(r, `${reason}.`) });
    const worker = r.worker;
    worker.addEventListener('message', (event) => onWorkerMessage(r, event.data, channel.port2));
    worker.addEventListener('messageerror', () => console.warn('AI4All: a message from the worker could not be read'));
    worker.addEventListener('error', (event) => {
      event.preventDefault();
      const detail = event.message || 'no detail (a module that failed to load?)';
      if (!r.ready) fail(r, `The node's worker did not load from ${origin}: ${detail}.`);
      else console.warn(`AI4All: error in the node's worker: ${detail}`);
    });
    r.readyTimer = setTimeout(() => fail(r, `The node's worker did not load within ${READY_TIMEOUT_MS / 1000} s.`), READY_TIMEOUT_MS);
  }

  /**
   * @param {Run} r
   * @param {unknown} data
   * @param {MessagePort} relayPort
   */
  function onWorkerMessage(r, data, relayPort) {
    if (run !== r && !r.stopping) return;
    if (data === null || typeof data !== 'object' || typeof (/** @type {any} */ (data).t) !== 'string') {
      console.warn('AI4All: dropped a malformed message from the worker');
      return;
    }
    const message = /** @type {{[key: string]: any}} */ (data);
    if (message.t === 'ready') {
      if (r.ready) return;
      r.ready = true;
      if (r.readyTimer !== null) clearTimeout(r.readyTimer);
      r.readyTimer = null;
      if (r.blobUrl !== null) URL.revokeObjectURL(r.blobUrl);
      r.blobUrl = null;
      r.worker?.postMessage({ t: 'start', memoryBudgetMb: settings.memoryMb, signal: settings.signal, relay: relayPort }, [relayPort]);
      if (!r.stopping) show('starting', 'Starting: joining the network…');
    } else if (message.t === 'status') {
      onStatus(message.status);
      if (!r.stopping && message.status && message.status.state === 'serving') show('running', `Contributing from this page with up to ${settings.memoryMb} MB. Thank you!`);
    } else if (message.t === 'failed') {
      fail(r, `The node stopped: ${String(message.message).slice(0, 500)}.`);
    } else if (message.t === 'stopped') {
      if (r.onStopped !== null) {
        r.onStopped();
      } else {
        teardown(r, 'the node stopped'); // stopped without Stop: the page is being left
        show('stopped', 'Stopped: nothing runs now.');
      }
    } else {
      console.warn(`AI4All: dropped a message of unknown type ${JSON.stringify(String(message.t).slice(0, 40))}`);
    }
  }

  async function stop() {
    const r = run;
    if (r === null || r.stopping) return;
    r.stopping = true;
    show('stopping', 'Stopping…');
    if (r.worker !== null && r.ready) {
      const stopped = new Promise((resolve) => {
        r.onStopped = () => resolve(true);
      });
      r.worker.postMessage({ t: 'stop' });
      const clean = await Promise.race([stopped, new Promise((resolve) => setTimeout(() => resolve(false), STOP_TIMEOUT_MS))]);
      if (!clean) console.warn(`AI4All: the node did not stop within ${STOP_TIMEOUT_MS / 1000} s; ending its worker`);
      if (run !== r) return; // it failed while stopping: the widget says why
    }
    teardown(r, 'stopped by the visitor');
    if (renderTimer !== null) {
      clearTimeout(renderTimer);
      renderStatus();
    }
    show('stopped', 'Stopped: nothing runs now. Thank you for contributing!');
  }

  // Leaving the page ends the worker; ask the node to stop first, so it can still say bye to
  // signaling and the directory forgets it now rather than when its announcement expires.
  window.addEventListener('pagehide', () => {
    if (run !== null && run.ready && !run.stopping) run.worker?.postMessage({ t: 'stop' });
  });

  startButton.addEventListener('click', () => {
    if (hostElement.dataset.state === 'dismissed') show('ask', askText);
    else start();
  });
  dismissButton.addEventListener('click', () => show('dismissed', 'AI4All: not contributing.'));
  stopButton.addEventListener('click', () => {
    stop();
  });

  if (settings.problems.length) {
    show('invalid', `AI4All cannot start on this page: ${settings.problems.join(' ')}`);
  } else {
    show('ask', askText);
  }

  // Where the tag stands; a tag in <head> puts the widget at the start of <body> once it exists.
  if (document.body !== null && document.body.contains(script)) {
    script.after(hostElement);
  } else if (document.body !== null) {
    document.body.prepend(hostElement);
  } else {
    document.addEventListener('DOMContentLoaded', () => document.body.prepend(hostElement), { once: true });
  }
})();

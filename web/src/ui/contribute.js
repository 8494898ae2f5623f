// @ts-check
/**
 * The contribute page (`/` of every signaling node, docs/browser.md): this browser serves blocks of a
 * model to the mesh, once the visitor opts in.
 *
 * Before the visitor presses "Start", nothing reaches the network: no websocket to signaling, no
 * manifest or shard request; only IndexedDB is read (the memory budget, whether the visitor opted in
 * before). A visitor who opted in before sees their balance and ledger log again (read from IndexedDB
 * through the ledger) and the button, but nothing starts by itself.
 *
 * "Start" runs a `BrowserNode` (web/src/node/node.js): it picks the least-served span that fits the
 * memory budget (or the span typed in), downloads it with a progress bar (from the IndexedDB cache when
 * it is there, checked by sha256 either way), announces it and serves. The page then shows what it
 * serves, its throughput, sessions, peers, balance and tokens earned, and a button that pauses (stops
 * announcing, lets open sessions finish) and resumes.
 *
 * Elements carry `data-testid` attributes for the browser tests (tests/browser/test_contribute.py).
 */

import { credits, el, message, mountPage } from './dom.js';
import { BrowserLedger } from '../ledger/ledger.js';
import { BrowserNode, MIB } from '../node/node.js';
import { PLAN_SESSIONS } from '../protocol/constants.js';
import { getSetting, loadOrCreateIdentity, openDatabase, setSetting } from '../storage/db.js';

const DB_NAME = 'ai4all';
const SETTINGS_KEY = 'contribute';
const DEFAULT_BUDGET_MB = 512;
const SPAN_RE = /^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$/;
const LOG_ROWS = 20;

/** @typedef {import('../node/node.js').NodeStatus} NodeStatus */
/** @typedef {{optedIn: boolean, memoryBudgetMb: number, span: string}} Settings */


/** @param {number} bytes */
const mib = (bytes) => `${(bytes / MIB).toFixed(1)} MiB`;
/** @param {string} id */
const short = (id) => `${id.slice(0, 8)}…${id.slice(-4)}`;

/**
 * "START-END" or empty (automatic) -> a span or null; throws a readable error otherwise.
 * @param {string} text
 * @returns {{start: number, end: number} | null}
 */
export function parseSpan(text) {
  if (text.trim() === '' || text.trim() === 'auto') return null;
  const match = SPAN_RE.exec(text);
  if (match === null) throw new Error(`blocks "${text}" should look like 1-3 (START-END), or be left empty`);
  const start = Number(match[1]);
  const end = Number(match[2]);
  if (!(end > start)) throw new Error(`blocks ${start}-${end}: END must be above START`);
  return { start, end };
}

class ContributePage {
  /**
   * @param {HTMLElement} root
   * @param {import('../node/node.js').PageConfig} config
   */
  constructor(root, config) {
    this.root = root;
    this.config = config;
    /** @type {IDBDatabase | null} */
    this.db = null;
    /** @type {BrowserNode | null} */
    this.node = null;
    /** @type {BrowserLedger | null} */
    this.ledger = null;
    /** @type {import('../identity/identity.js').Identity | null} */
    this.identity = null;
    /** @type {Settings} */
    this.settings = { optedIn: false, memoryBudgetMb: DEFAULT_BUDGET_MB, span: '' };
    this.busy = false;
    this.lastBalance = /** @type {number | null} */ (null);
    this.build();
  }

  build() {
    const models = this.config.models.map((m) => m.name);
    this.startButton = /** @type {HTMLButtonElement} */ (
      el('button', { type: 'button', 'data-testid': 'opt-in', disabled: true }, 'Start contributing')
    );
    this.budgetInput = /** @type {HTMLInputElement} */ (
      el('input', { type: 'number', min: '1', step: 'any', inputmode: 'decimal', 'data-testid': 'memory-budget', id: 'memory-budget' })
    );
    this.spanInput = /** @type {HTMLInputElement} */ (
      el('input', { type: 'text', placeholder: 'automatic', autocomplete: 'off', spellcheck: 'false', 'data-testid': 'span-input', id: 'span-input', size: '9' })
    );
    this.modelSelect = /** @type {HTMLSelectElement} */ (
      el('select', { 'data-testid': 'model', id: 'model', disabled: models.length < 2 }, ...models.map((m) => el('option', { value: m }, m)))
    );
    this.error = el('p', { class: 'notice error', role: 'alert', 'data-testid': 'error', hidden: true });
    this.intro = el(
      'section',
      { class: 'card', 'aria-labelledby': 'join-title' },
      el('h2', { id: 'join-title' }, 'Lend this browser to the mesh'),
      el(
        'p',
        {},
        'AI4All runs language models on volunteers\u2019 machines. With your consent this tab downloads a few ' +
          'layers of a model, keeps them in this browser for next time, and runs them for people chatting ' +
          'through the mesh. You earn credits for every token you serve. Nothing is downloaded or started ' +
          'before you press Start, and you can pause at any time.',
      ),
      el(
        'div',
        { class: 'row contribute-settings' },
        el('label', { for: 'memory-budget' }, 'Memory budget (MiB)', this.budgetInput),
        el('label', { for: 'span-input' }, 'Blocks', this.spanInput),
        el('label', { for: 'model' }, 'Model', this.modelSelect),
      ),
      el(
        'p',
        { class: 'muted' },
        `The budget holds the layers and their caches (room for ${PLAN_SESSIONS} sessions); in WASM it is at most 4 GiB less the runtime. ` +
          'Leave the blocks empty to serve the least-served blocks that fit.',
      ),
      el('div', { class: 'row' }, this.startButton, el('span', { class: 'muted', 'data-testid': 'opt-in-note' }, 'Loading settings…')),
    );

    this.stateBadge = el('span', { class: 'badge', 'data-testid': 'state' }, 'not started');
    this.progress = /** @type {HTMLProgressElement} */ (el('progress', { max: '1', value: '0', 'data-testid': 'progress' }));
    this.progressText = el('span', { class: 'muted', 'data-testid': 'progress-text' });
    this.progressRow = el('div', { class: 'contribute-progress', hidden: true }, this.progress, this.progressText);
    this.serving = el('p', { 'data-testid': 'serving' }, 'Not serving.');
    /** Why these blocks: what they need against the budget the backend allows. */
    this.spanReason = el('p', { class: 'muted', 'data-testid': 'span-reason' });
    this.pauseButton = /** @type {HTMLButtonElement} */ (
      el('button', { type: 'button', class: 'secondary', 'data-testid': 'pause', disabled: true }, 'Pause')
    );
    /** @type {{[key: string]: HTMLElement}} */
    this.facts = {};
    const fact = (/** @type {string} */ key, /** @type {string} */ label) => {
      this.facts[key] = el('dd', { 'data-testid': key }, '—');
      return [el('dt', {}, label), this.facts[key]];
    };
    this.peerList = el('ul', { class: 'contribute-peers', 'data-testid': 'peers' });
    this.status = el(
      'section',
      { class: 'card', 'aria-labelledby': 'status-title', 'data-testid': 'status', hidden: true },
      el('div', { class: 'row' }, el('h2', { id: 'status-title' }, 'This browser'), this.stateBadge),
      this.progressRow,
      this.serving,
      this.spanReason,
      el(
        'dl',
        { class: 'stats' },
        ...fact('throughput', 'Throughput'),
        ...fact('sessions', 'Open sessions'),
        ...fact('tokens-served', 'Tokens served'),
        ...fact('peer-count', 'Connected peers'),
      ),
      this.peerList,
      el('div', { class: 'row' }, this.pauseButton),
    );

    this.peerId = el('dd', { 'data-testid': 'peer-id', class: 'contribute-id' }, '—');
    this.balance = el('dd', { 'data-testid': 'balance' }, '—');
    this.earned = el('dd', { 'data-testid': 'earned' }, '—');
    this.logList = el('ol', { class: 'contribute-log', 'data-testid': 'ledger-log', reversed: true });
    this.account = el(
      'section',
      { class: 'card', 'aria-labelledby': 'account-title', 'data-testid': 'account', hidden: true },
      el('h2', { id: 'account-title' }, 'Credits'),
      el(
        'dl',
        { class: 'stats' },
        el('dt', {}, 'Peer id'),
        this.peerId,
        el('dt', {}, 'Balance'),
        this.balance,
        el('dt', {}, 'Earned serving'),
        this.earned,
      ),
      el('h3', {}, 'Your ledger'),
      this.logList,
    );

    this.root.replaceChildren(
      el('h1', {}, 'Contribute to AI4All'),
      this.error,
      this.intro,
      this.status,
      this.account,
    );
    this.startButton.addEventListener('click', () => this.start());
    this.pauseButton.addEventListener('click', () => this.togglePause());
    this.budgetInput.addEventListener('change', () => this.saveSettings());
    this.spanInput.addEventListener('change', () => this.saveSettings());
  }

  /** @param {string | null} text */
  showError(text) {
    this.error.textContent = text ?? '';
    this.error.hidden = text === null;
  }

  /** Read the settings (IndexedDB only); a returning visitor sees their ledger again. */
  async init() {
    const note = /** @type {HTMLElement} */ (this.root.querySelector('[data-testid="opt-in-note"]'));
    try {
      this.db = await openDatabase(DB_NAME);
      const saved = /** @type {Partial<Settings> | undefined} */ (await getSetting(this.db, SETTINGS_KEY));
      this.settings = { ...this.settings, ...(saved ?? {}) };
    } catch (err) {
      this.showError(`This browser's storage (IndexedDB) is not available: ${message(err)}`);
      note.textContent = '';
      return;
    }
    this.budgetInput.value = String(this.settings.memoryBudgetMb);
    this.spanInput.value = this.settings.span;
    this.startButton.disabled = false;
    note.textContent = this.settings.optedIn ? 'You contributed from this browser before; press Start to go on.' : '';
    if (this.settings.optedIn) {
      this.account.hidden = false;
      this.balance.textContent = 'loading your ledger…';
      try {
        await this.openLedger();
        await this.showAccount();
      } catch (err) {
        this.balance.textContent = '—';
        this.showError(`Your ledger could not be read: ${message(err)}`);
      }
    }
  }

  /**
   * Open the ledger to show it, without mining a starter grant (a returning visitor's page does no
   * proof of work before they press Start; the node claims the grant under its lock).
   */
  async openLedger() {
    if (this.ledger !== null) return;
    const db = /** @type {IDBDatabase} */ (this.db);
    this.identity ??= await loadOrCreateIdentity(db);
    this.peerId.textContent = this.identity.peerId;
    this.ledger = await BrowserLedger.open({
      db,
      identity: this.identity,
      powBits: this.config.ledger.pow_bits,
      coreUrl: this.config.python_core,
      claimGrant: false,
    });
  }

  async saveSettings() {
    const budget = Number(this.budgetInput.value);
    if (Number.isFinite(budget) && budget > 0) this.settings.memoryBudgetMb = budget;
    this.settings.span = this.spanInput.value.trim();
    if (this.db !== null) await setSetting(this.db, SETTINGS_KEY, { ...this.settings });
  }

  async start() {
    if (this.busy || this.node !== null) return;
    this.showError(null);
    const budget = Number(this.budgetInput.value);
    if (!(Number.isFinite(budget) && budget > 0)) {
      this.showError(`The memory budget "${this.budgetInput.value}" must be a positive number of MiB.`);
      return;
    }
    let span;
    try {
      span = parseSpan(this.spanInput.value);
    } catch (err) {
      this.showError(`Cannot start: ${message(err)}.`);
      return;
    }
    this.busy = true;
    this.startButton.disabled = true;
    this.budgetInput.disabled = true;
    this.spanInput.disabled = true;
    this.modelSelect.disabled = true;
    this.status.hidden = false;
    this.account.hidden = false;
    this.setBadge('starting', 'warn');
    try {
      this.settings.optedIn = true;
      await this.saveSettings();
      this.serving.textContent = 'Starting: loading your ledger (the first time, earning the starter grant takes a moment)…';
      // The node opens the ledger itself, under its lock: this page's copy (shown so far) is closed.
      const shown = this.ledger;
      this.ledger = null;
      await shown?.close();
      this.node = await BrowserNode.start(this.config, {
        db: /** @type {IDBDatabase} */ (this.db),
        memoryBudgetMb: budget,
        span,
        model: this.modelSelect.value || null,
        runtime: { allowWebGPU: true, threads: 1 },
        onEvent: (event) => this.render(event.status),
      });
      this.ledger = this.node.ledger;
      this.identity = this.node.identity;
      this.render(this.node.status());
      await this.showAccount();
      this.timer = setInterval(() => this.node && this.render(this.node.status()), 1000);
    } catch (err) {
      this.node = null;
      this.showError(`Could not start serving: ${message(err)}`);
      this.openLedger()
        .then(() => this.showAccount())
        .catch(() => {}); // the ledger as it stands, if it can be read at all
      this.setBadge('error', 'bad');
      this.serving.textContent = 'Not serving.';
      this.progressRow.hidden = true;
      this.startButton.disabled = false;
      this.budgetInput.disabled = false;
      this.spanInput.disabled = false;
      this.modelSelect.disabled = this.config.models.length < 2;
    } finally {
      this.busy = false;
    }
  }

  async togglePause() {
    const node = this.node;
    if (node === null || this.busy) return;
    this.busy = true;
    this.pauseButton.disabled = true;
    try {
      if (node.status().state === 'serving') {
        const pausing = node.pause();
        this.render(node.status());
        await pausing;
      } else {
        await node.resume();
      }
    } catch (err) {
      this.showError(message(err));
    } finally {
      this.busy = false;
      this.render(node.status());
    }
  }

  /**
   * @param {string} text
   * @param {'ok' | 'warn' | 'bad' | ''} tone
   */
  setBadge(text, tone) {
    this.stateBadge.textContent = text;
    this.stateBadge.className = `badge ${tone}`.trim();
  }

  /** @param {NodeStatus} status */
  render(status) {
    const tones = /** @type {const} */ ({ starting: 'warn', downloading: 'warn', serving: 'ok', paused: 'warn', stopped: '', error: 'bad' });
    this.setBadge(status.state, tones[status.state]);
    if (status.peerId) this.peerId.textContent = status.peerId;
    const { loaded, total, cached } = status.download;
    if (total > 0) {
      this.progressRow.hidden = false;
      this.progress.max = total;
      this.progress.value = loaded;
      this.progressText.textContent =
        loaded >= total
          ? `${mib(total)} ${cached ? 'from this browser\u2019s cache' : 'downloaded'}, sha256 checked`
          : `${mib(loaded)} of ${mib(total)}`;
    }
    const span = status.span ? `blocks ${status.span.start}-${status.span.end} of ${status.model}` : null;
    if (status.state === 'serving' && span) this.serving.textContent = `Serving ${span}.`;
    else if (status.state === 'paused' && span) {
      this.serving.textContent =
        status.sessions > 0
          ? `Pausing: ${status.sessions === 1 ? '1 open session is' : `${status.sessions} open sessions are`} finishing (${span}).`
          : `Paused (${span} not announced).`;
    } else if (status.state === 'downloading' && span) this.serving.textContent = `Downloading ${span}…`;
    else if (status.state === 'starting') this.serving.textContent = 'Starting: connecting to the mesh…';
    else if (status.state === 'error') this.serving.textContent = 'Not serving.';
    this.spanReason.textContent = status.choice ? `Why these blocks: ${status.choice}.` : '';
    if (status.error) this.showError(`Could not start serving: ${status.error}`);
    this.facts.throughput.textContent =
      status.state === 'serving' || status.state === 'paused' ? `${status.tokensPerSecond.toFixed(1)} tokens/s` : '—';
    this.facts.sessions.textContent = String(status.sessions);
    this.facts['tokens-served'].textContent = status.tokensServed.toLocaleString('en');
    this.facts['peer-count'].textContent = String(status.peers.length);
    this.peerList.replaceChildren(
      ...status.peers.map((p) => el('li', { 'data-testid': 'peer', title: p.peerId }, `${short(p.peerId)} `, el('span', { class: 'muted' }, p.state))),
    );
    const active = status.state === 'serving' || status.state === 'paused';
    this.pauseButton.hidden = !active;
    this.pauseButton.disabled = !active || this.busy;
    this.pauseButton.textContent = status.state === 'paused' ? 'Resume' : 'Pause';
    this.pauseButton.dataset.action = status.state === 'paused' ? 'resume' : 'pause';
    if (status.balance !== null) {
      this.balance.textContent = `${credits(status.balance)} credits`;
      this.earned.textContent = `${credits(status.earned)} credits`;
      if (status.balance !== this.lastBalance) {
        this.lastBalance = status.balance;
        this.showLog().catch(() => {});
      }
    }
  }

  /** The balance and log as the ledger holds them now. */
  async showAccount() {
    const ledger = this.ledger;
    if (ledger === null) return;
    const account = await ledger.account();
    this.account.hidden = false;
    this.balance.textContent = `${credits(account.balance)} credits`;
    this.earned.textContent = `${credits(account.earned)} credits`;
    this.lastBalance = account.balance;
    await this.showLog();
  }

  async showLog() {
    const ledger = this.ledger;
    if (ledger === null || this.identity === null) return;
    const me = this.identity.peerId;
    const entries = /** @type {any[]} */ (await ledger.log(me, LOG_ROWS)); // newest first
    const recent = entries;
    this.logList.replaceChildren(
      ...recent.map((entry) => el('li', { 'data-testid': 'log-entry', 'data-kind': String(entry?.body?.kind) }, describeEntry(entry, me))),
    );
    if (!entries.length) this.logList.replaceChildren(el('li', { class: 'muted' }, 'No entries yet.'));
  }
}

/**
 * One line for a ledger entry of this node's log.
 * @param {any} entry
 * @param {string} me
 */
export function describeEntry(entry, me) {
  const when = Number.isFinite(entry?.time) ? new Date(entry.time).toLocaleString() : '?';
  const body = entry?.body ?? {};
  if (body.kind === 'grant') return `#${entry.seq} ${when}: starter grant`;
  if (body.kind === 'receipt') {
    const r = body.receipt ?? {};
    const served = r.server === me;
    const other = served ? r.client : r.server;
    return (
      `#${entry.seq} ${when}: ${served ? 'served' : 'used'} ${r.tokens} tokens through blocks ${r.start}-${r.end} ` +
      `of ${r.model} ${served ? 'for' : 'from'} ${typeof other === 'string' ? short(other) : '?'}`
    );
  }
  if (body.kind === 'fork_proof') return `#${entry.seq} ${when}: fork proof`;
  return `#${entry?.seq} ${when}: ${String(body.kind)}`;
}

function main() {
  const { root, config } = mountPage(new URL('./contribute.css', import.meta.url));
  const page = new ContributePage(root, config);
  page.init().catch((err) => page.showError(message(err)));
  // Leaving the page: say bye to signaling (best effort), so the mesh stops routing to this tab now.
  window.addEventListener('pagehide', () => {
    page.node?.stop().catch(() => {});
  });
}

main();

// @ts-check
/**
 * The browser chat page (`/chat` of every signaling node, docs/browser.md): a chat whose prompt never
 * leaves this tab.
 *
 * The tokenizer and chat template (`web/src/runtime/tokenizer.js`), the embedding shard and the head
 * shard (`web/src/runtime/shard.js`) run here; the mesh client (`web/src/client/mesh_client.js`) sends
 * only hidden states, with their attention mask and positions, over WebRTC data channels to the peers
 * that serve the blocks in between, and samples the next token here from the logits of the local head.
 * The privacy panel shows what left the machine: per peer, the frames and bytes of hidden states and
 * of control frames (open, close, ledger), counted by the client as it sends them; signaling carries
 * only peer lookups and connection set-up.
 *
 * The identity and the ledger (which pays the peers) come from IndexedDB (`web/src/storage/db.js`,
 * `web/src/ledger/ledger.js`); the embed and head shards are cached there by sha256 too. The page is a
 * browser node (`BrowserNodeCore`, web/src/node/core.js: lock, signal client, transport, ledger gossip
 * through signaling) with a mesh client plugged on. Elements
 * carry `data-testid` attributes for tests/browser/test_browser_client.py.
 */

import { credits, el, message, mountPage } from './dom.js';
import { MeshClient } from '../client/mesh_client.js';
import { BrowserNodeCore } from '../node/core.js';
import { transportConfigFor } from '../transport/peer.js';
import { samplingParams, stream } from '../client/generate.js';
import { ModelTokenizer } from '../runtime/tokenizer.js';
import { fetchVerifiedManifest, trustPolicy } from '../runtime/publication.js';
import { shardTotalBytes } from '../runtime/download.js';
import { fetchShardCached, loadOrCreateIdentity, openDatabase } from '../storage/db.js';

/** @typedef {import('../node/config.js').PageConfig} PageConfig */

/** @typedef {{role: 'user' | 'assistant', content: string}} Turn */

/** @param {string} id */
const short = (id) => `${id.slice(0, 8)}…`;
/** @param {number} bytes */
export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
}

/**
 * A number from an input, within bounds, or an Error naming the field.
 * @param {HTMLInputElement} input
 * @param {string} name
 * @param {number} low
 * @param {number} high
 * @param {{integer?: boolean, optional?: boolean}} [options]
 */
function readNumber(input, name, low, high, { integer = false, optional = false } = {}) {
  const text = input.value.trim();
  if (text === '' && optional) return null;
  const value = Number(text);
  if (text === '' || !Number.isFinite(value) || value < low || value > high || (integer && !Number.isInteger(value))) {
    throw new Error(`${name} must be ${integer ? 'an integer' : 'a number'} from ${low} to ${high}`);
  }
  return value;
}

/**
 * The privacy table's empty state: one row whose one cell spans every column. (It was a CSS
 * `tbody:empty::after` table caption inside the body, which Chromium laid out one letter per line.)
 */
function emptyPeersRow() {
  return el(
    'tr',
    { class: 'empty' },
    el('td', { colspan: String(PEER_COLUMNS.length), class: 'muted', 'data-testid': 'peers-empty' }, 'No peer has been sent anything yet.'),
  );
}

const PEER_COLUMNS = ['Peer', 'Blocks', 'Hidden-state frames', 'Hidden-state bytes', 'Token positions', 'Control frames'];

class ChatPage {
  /**
   * @param {HTMLElement} root
   * @param {PageConfig} config
   */
  constructor(root, config) {
    this.root = root;
    this.config = config;
    /** @type {IDBDatabase | null} */
    this.db = null;
    /** @type {import('../identity/identity.js').Identity | null} */
    this.identity = null;
    /** @type {Promise<import('../ledger/ledger.js').BrowserLedger | null> | null} */
    this.ledger = null;
    /** @type {{name: string, client: MeshClient, tokenizer: ModelTokenizer, manifest: any} | null} */
    this.model = null;
    /** @type {Promise<void> | null} */
    this.loading = null;
    /** @type {BrowserNodeCore | null} the node assembly: lock, signal client, transport, signaling gossip */
    this.core = null;
    /** @type {Turn[]} */
    this.conversation = [];
    /** @type {AbortController | null} */
    this.running = null;
    this.promptTokens = 0;
    this.build();
  }

  build() {
    const models = this.config.models ?? [];
    this.modelSelect = /** @type {HTMLSelectElement} */ (
      el('select', { id: 'model', 'data-testid': 'model', disabled: models.length < 2 }, ...models.map((m) => el('option', { value: m.name }, m.name)))
    );
    const number = (/** @type {string} */ id, /** @type {string} */ value, /** @type {{[k: string]: string}} */ attrs) =>
      /** @type {HTMLInputElement} */ (el('input', { id, 'data-testid': id, type: 'number', value, inputmode: 'decimal', ...attrs }));
    this.temperature = number('temperature', '0.7', { min: '0', max: '2', step: '0.1' });
    this.topP = number('top-p', '0.95', { min: '0.05', max: '1', step: '0.05' });
    this.maxTokens = number('max-tokens', '256', { min: '1', max: '2048', step: '1', inputmode: 'numeric' });
    this.seed = number('seed', '', { min: '0', max: '4294967295', step: '1', inputmode: 'numeric', placeholder: 'random' });
    this.newChat = /** @type {HTMLButtonElement} */ (el('button', { type: 'button', class: 'secondary', 'data-testid': 'new-chat' }, 'New chat'));
    this.status = el('p', { class: 'notice', role: 'status', 'data-testid': 'status' }, 'Starting…');
    this.warning = el('p', { class: 'notice error', role: 'alert', 'data-testid': 'warning', hidden: true });
    this.progress = /** @type {HTMLProgressElement} */ (el('progress', { max: '1', value: '0', 'data-testid': 'progress', hidden: true }));
    this.messages = el('ol', { class: 'messages', 'data-testid': 'messages', 'aria-live': 'polite' });
    this.prompt = /** @type {HTMLTextAreaElement} */ (
      el('textarea', { id: 'prompt', 'data-testid': 'prompt', rows: '2', placeholder: 'Ask something… (Enter sends, Shift+Enter for a new line)' })
    );
    this.send = /** @type {HTMLButtonElement} */ (el('button', { type: 'submit', 'data-testid': 'send', disabled: true }, 'Send'));
    this.stop = /** @type {HTMLButtonElement} */ (el('button', { type: 'button', class: 'secondary', 'data-testid': 'stop', hidden: true }, 'Stop'));
    this.form = /** @type {HTMLFormElement} */ (el('form', { class: 'compose', 'data-testid': 'compose' }, this.prompt, this.send, this.stop));
    this.replyInfo = el('p', { class: 'muted', 'data-testid': 'reply-info' });

    /** @type {{[key: string]: HTMLElement}} */
    this.facts = {};
    const fact = (/** @type {string} */ key, /** @type {string} */ label, /** @type {string} */ text) => {
      this.facts[key] = el('dd', { 'data-testid': key }, text);
      return [el('dt', {}, label), this.facts[key]];
    };
    this.peerRows = el('tbody', { 'data-testid': 'peers' }, emptyPeersRow());
    const privacy = el(
      'section',
      { class: 'card chat-privacy', 'aria-labelledby': 'privacy-title', 'data-testid': 'privacy' },
      el('h2', { id: 'privacy-title' }, 'What left this machine'),
      el(
        'dl',
        { class: 'stats' },
        ...fact('prompt-sent', 'Prompt text', 'never sent'),
        ...fact('ids-sent', 'Token ids', 'never sent'),
        ...fact('logits-sent', 'Logits', 'never sent'),
        ...fact('local-work', 'Done in this tab', '—'),
        ...fact('hidden-total', 'Hidden states sent', 'nothing yet'),
        ...fact('control-total', 'Control frames sent', 'nothing yet'),
        ...fact('signaling', 'Signaling', 'peer lookups and WebRTC connection set-up only'),
      ),
      el(
        'table',
        { class: 'chat-peers' },
        el(
          'thead',
          {},
          el('tr', {}, ...PEER_COLUMNS.map((h) => el('th', { scope: 'col' }, h))),
        ),
        this.peerRows,
      ),
      el(
        'p',
        { class: 'muted' },
        'Your words become token ids and hidden states here; each peer sees only the hidden states of the ' +
          'blocks it runs, over an encrypted data channel, and the next token is picked here from the ' +
          'logits of the output head, which also runs here.',
      ),
    );
    const account = el(
      'section',
      { class: 'card', 'aria-labelledby': 'account-title', 'data-testid': 'account' },
      el('h2', { id: 'account-title' }, 'Credits'),
      el('dl', { class: 'stats' }, ...fact('peer-id', 'Peer id', '—'), ...fact('balance', 'Balance', '—'), ...fact('receipts', 'Receipts signed', '0')),
    );
    const settings = el(
      'section',
      { class: 'card', 'aria-label': 'settings' },
      el(
        'div',
        { class: 'row' },
        el('label', { for: 'model' }, 'Model', this.modelSelect),
        el('label', { for: 'temperature' }, 'Temperature', this.temperature),
        el('label', { for: 'top-p' }, 'Top p', this.topP),
        el('label', { for: 'max-tokens' }, 'Max tokens', this.maxTokens),
        el('label', { for: 'seed' }, 'Seed', this.seed),
        this.newChat,
      ),
      this.progress,
    );
    const chat = el('section', { class: 'card chat-main', 'aria-label': 'chat' }, this.messages, this.replyInfo, this.form);
    this.root.replaceChildren(
      el('h1', {}, 'Chat in your browser'),
      this.status,
      this.warning,
      settings,
      el('div', { class: 'chat-layout' }, chat, el('div', { class: 'chat-side' }, privacy, account)),
    );

    this.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit().catch((err) => this.showStatus(message(err), 'error'));
    });
    this.prompt.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.form.requestSubmit();
      }
    });
    this.stop.addEventListener('click', () => this.running?.abort());
    this.newChat.addEventListener('click', () => {
      this.running?.abort();
      this.conversation = [];
      this.messages.replaceChildren();
      this.replyInfo.textContent = '';
    });
    this.modelSelect.addEventListener('change', () => {
      this.loading = this.loadModel(this.modelSelect.value);
      this.loading.catch(() => {});
    });
  }

  /**
   * @param {string} text
   * @param {'ok' | 'error' | ''} [tone]
   */
  showStatus(text, tone = '') {
    this.status.className = tone ? `notice ${tone}` : 'notice';
    this.status.textContent = text;
  }

  async init() {
    if (!(this.config.models ?? []).length) {
      this.showStatus('This node serves no model files, so there is nothing to chat with here.', 'error');
      return;
    }
    this.db = await openDatabase();
    this.identity = await loadOrCreateIdentity(this.db);
    this.facts['peer-id'].textContent = short(this.identity.peerId);
    this.facts['peer-id'].title = this.identity.peerId;
    const db = this.db;
    const identity = this.identity;
    // Imported here, not statically: a page whose ledger cannot start still chats with peers that keep none.
    this.ledger = import('../ledger/ledger.js')
      .then(({ BrowserLedger }) =>
        BrowserLedger.open({ db, identity, powBits: this.config.ledger.pow_bits, coreUrl: this.config.python_core }),
      )
      .catch((/** @type {unknown} */ err) => {
        this.warning.textContent = `The ledger did not start (${message(err)}): peers that keep a ledger will refuse to serve this tab.`;
        this.warning.hidden = false;
        this.facts.balance.textContent = 'no ledger';
        return null;
      });
    const ledger = /** @type {Promise<import('../node/core.js').GossipLedger | null>} */ (/** @type {unknown} */ (this.ledger));
    this.core = new BrowserNodeCore({ identity, ledger, transportConfig: transportConfigFor(this.config) });
    this.loading = this.loadModel(this.modelSelect.value);
    await this.loading;
    await this.refreshAccount();
  }

  /** @param {string} name */
  async loadModel(name) {
    const entry = (this.config.models ?? []).find((m) => m.name === name);
    const core = this.core;
    if (entry === undefined || this.db === null || core === null || this.ledger === null) return;
    this.send.disabled = true;
    const previous = this.model;
    this.model = null;
    if (previous !== null) await previous.client.release();
    const db = this.db;
    try {
      this.showStatus(`Loading ${name}: the tokenizer, the embedding and the output head run in this tab…`);
      // the publisher's signature, the pinned manifest and every file's hash, trusted as the node's config says
      const signed = entry.signed !== false; // false: an unsigned export, taken only if the node allows them
      const { manifest, publication } = await fetchVerifiedManifest(entry.base, trustPolicy(this.config), signed);
      const tokenizer = await ModelTokenizer.load(entry.base, manifest, publication);
      const ledger = await this.ledger;
      // Signaling binds a peer id to one connection: while the contribute page of this browser serves as
      // this identity, announcing it here would take the node's place. Hold the node's lock instead.
      await core.lock(`ai4all-node/${db.name}`);
      await core.connect(this.config.signal);
      const local = manifest.shards.filter((/** @type {any} */ s) => s.kind === 'embed' || s.kind === 'head');
      const total = local.reduce((/** @type {number} */ n, /** @type {any} */ s) => n + shardTotalBytes(s), 0);
      /** @type {Map<string, number>} */
      const received = new Map();
      this.progress.hidden = false;
      const client = await MeshClient.attach(core, {
        manifest,
        baseUrl: entry.base,
        ledger,
        shardBytes: (url, shard, onProgress) =>
          fetchShardCached(db, url, shard.sha256, shard.bytes, (got, size) => {
            received.set(shard.file, got);
            this.progress.value = [...received.values()].reduce((a, b) => a + b, 0) / total;
            onProgress?.(got, size);
          }, { meta: { model: name, file: shard.file, kind: shard.kind } }),
      });
      this.progress.hidden = true;
      client.trafficListeners.add(() => this.showTraffic());
      this.model = { name, client, tokenizer, manifest };
      const backend = client.embedRunner.runner.backend;
      this.facts['local-work'].textContent = `tokenizer (${manifest.tokenizer?.file ?? 'tokenizer.json'}), embedding and output head (${backend})`;
      this.send.disabled = false;
      this.showStatus(`${name} is ready: ${manifest.model.config.num_layers} blocks run on peers of the mesh.`, 'ok');
    } catch (err) {
      this.progress.hidden = true;
      this.showStatus(`Cannot load ${name}: ${message(err)}`, 'error');
      throw err;
    }
  }

  async refreshAccount() {
    const ledger = await this.ledger;
    if (!ledger) return;
    try {
      this.facts.balance.textContent = `${credits(await ledger.balance())} credits`;
    } catch (err) {
      this.facts.balance.textContent = `unknown (${message(err)})`;
    }
  }

  showTraffic() {
    const client = this.model?.client;
    if (!client) return;
    let hiddenFrames = 0;
    let hiddenBytes = 0;
    let controlFrames = 0;
    let controlBytes = 0;
    const rows = [];
    for (const t of client.traffic.values()) {
      hiddenFrames += t.hiddenFrames;
      hiddenBytes += t.hiddenBytes;
      controlFrames += t.controlFrames;
      controlBytes += t.controlBytes;
      rows.push(
        el(
          'tr',
          { 'data-peer': t.peerId },
          el('td', { title: t.peerId }, el('code', {}, short(t.peerId))),
          el('td', {}, t.spans.join(', ') || '—'),
          el('td', { 'data-testid': 'peer-hidden-frames' }, String(t.hiddenFrames)),
          el('td', { 'data-testid': 'peer-hidden-bytes', title: `${t.hiddenBytes} bytes` }, formatBytes(t.hiddenBytes)),
          el('td', {}, String(t.tokenPositions)),
          el('td', { title: `${t.controlBytes} bytes` }, `${t.controlFrames} (${formatBytes(t.controlBytes)})`),
        ),
      );
    }
    this.peerRows.replaceChildren(...(rows.length ? rows : [emptyPeersRow()]));
    this.facts['hidden-total'].textContent = `${hiddenFrames} frames, ${formatBytes(hiddenBytes)} to ${client.traffic.size} peers`;
    this.facts['hidden-total'].dataset.bytes = String(hiddenBytes);
    this.facts['control-total'].textContent = `${controlFrames} frames, ${formatBytes(controlBytes)} (open, close, ledger)`;
    this.facts['control-total'].dataset.bytes = String(controlBytes);
    this.facts.receipts.textContent = String(client.receipts.length);
  }

  /** Send the prompt and stream the reply. */
  async submit() {
    const text = this.prompt.value.trim();
    if (text === '' || this.running !== null) return;
    if (this.loading !== null) await this.loading.catch(() => {});
    const model = this.model;
    if (model === null) throw new Error('no model is loaded: pick one above');
    const params = samplingParams({
      temperature: /** @type {number} */ (readNumber(this.temperature, 'Temperature', 0, 2)),
      topP: /** @type {number} */ (readNumber(this.topP, 'Top p', 0.05, 1)),
      maxTokens: /** @type {number} */ (readNumber(this.maxTokens, 'Max tokens', 1, 2048, { integer: true })),
      seed: readNumber(this.seed, 'Seed', 0, 2 ** 32 - 1, { integer: true, optional: true }),
    });
    const turns = [...this.conversation, { role: /** @type {const} */ ('user'), content: text }];
    const promptText = model.tokenizer.chatTemplate !== null ? model.tokenizer.renderChat(turns) : text;
    const ids = model.tokenizer.encode(promptText);
    this.promptTokens = ids.length;
    this.facts['prompt-sent'].textContent = `never sent (the last prompt's ${ids.length} tokens were made and embedded in this tab)`;
    this.prompt.value = '';
    this.messages.append(el('li', { class: 'message user', 'data-testid': 'user-message' }, text));
    const reply = el('li', { class: 'message assistant', 'data-testid': 'assistant-message', 'aria-busy': 'true' });
    this.messages.append(reply);
    reply.scrollIntoView({ block: 'nearest' });
    const abort = new AbortController();
    this.running = abort;
    this.send.disabled = true;
    this.modelSelect.disabled = true;
    this.stop.hidden = false;
    this.replyInfo.textContent = `Your ${ids.length} prompt tokens were embedded in this tab; generating…`;
    /** @type {import('../client/generate.js').Generation} */
    const result = { text: '', tokenIds: [], finishReason: 'length', promptTokens: 0 };
    /** @type {[string, number, number][]} */
    let route = [];
    let failovers = 0;
    const client = model.client;
    const pipeline = {
      context: client.context,
      open: async (/** @type {number} */ batch, /** @type {number} */ maxLength) => {
        const session = await client.open(batch, maxLength);
        route = session.route;
        return {
          step: (/** @type {BigInt64Array} */ stepIds, /** @type {BigInt64Array} */ mask) => session.step(stepIds, mask),
          close: async () => {
            route = session.route;
            failovers = session.failovers;
            await session.close();
          },
        };
      },
    };
    const started = performance.now();
    let firstToken = 0;
    try {
      for await (const piece of stream(pipeline, model.tokenizer, ids, params, { result, signal: abort.signal })) {
        if (!firstToken) firstToken = performance.now();
        reply.append(piece);
        reply.scrollIntoView({ block: 'nearest' });
      }
      this.conversation = [...turns, { role: 'assistant', content: result.text }];
      const seconds = (performance.now() - (firstToken || started)) / 1000;
      const rate = result.tokenIds.length > 1 && seconds > 0 ? ` at ${((result.tokenIds.length - 1) / seconds).toFixed(1)} tokens/s` : '';
      const path = route.map(([peer, start, end]) => `${short(peer)} (${start}-${end})`).join(' → ');
      const why = { stop: 'finished', length: 'stopped at max tokens', cancelled: 'stopped' }[result.finishReason];
      this.replyInfo.textContent =
        `${result.tokenIds.length} tokens${rate}, ${why}; route ${path}` + (failovers ? `; ${failovers} failover(s)` : '');
      reply.dataset.finish = result.finishReason;
      this.showStatus(`${model.name} is ready.`, 'ok');
    } catch (err) {
      reply.classList.add('error');
      reply.append(reply.textContent ? `\n[${message(err)}]` : message(err));
      reply.dataset.finish = 'error';
      this.replyInfo.textContent = '';
      this.showStatus(`The reply failed: ${message(err)}`, 'error');
    } finally {
      reply.removeAttribute('aria-busy');
      this.running = null;
      this.send.disabled = false;
      this.modelSelect.disabled = (this.config.models ?? []).length < 2;
      this.stop.hidden = true;
      this.showTraffic();
      this.refreshAccount();
    }
  }
}

function main() {
  const { root, config } = mountPage(new URL('./browser_chat.css', import.meta.url));
  const page = new ChatPage(root, config);
  page.init().catch((err) => page.showStatus(message(err), 'error'));
  window.addEventListener('pagehide', () => {
    page.running?.abort();
    page.model?.client.close().catch(() => {});
    page.core?.release().catch(() => {});
  });
}

main();

// @ts-check
/**
 * What every page shares: the configuration the node injected, the header (balance, serving badge,
 * API key form) kept live from `/v1/node/events`, and small DOM and formatting helpers.
 */

import { ApiError, follow, setApiKey } from "./api.js";

/**
 * @typedef {object} ModelInfo
 * @property {string} id
 * @property {number} blocks
 * @property {number} hidden_size
 */

/**
 * @typedef {object} SettingsInfo
 * @property {boolean} serving
 * @property {"serving" | "paused"} state
 * @property {string} model
 * @property {string} span
 * @property {number} memory_budget_mb
 * @property {number} kv_free_tokens
 * @property {string[]} spans
 * @property {string[]} [changed]
 */

/**
 * @typedef {object} PageConfig
 * @property {string} page
 * @property {string} api_base
 * @property {string} events
 * @property {string | null} peer_id
 * @property {ModelInfo[]} models
 * @property {SettingsInfo | null} settings
 * @property {number} units_per_credit
 */

/**
 * @typedef {object} Balance
 * @property {number} balance
 * @property {number} granted
 * @property {number} earned
 * @property {number} bonuses
 * @property {number} spent
 */

/**
 * @typedef {object} NodeState
 * @property {string} peer_id
 * @property {"serving" | "paused" | "client"} state
 * @property {string | null} model
 * @property {string | null} span
 * @property {number | null} blocks
 * @property {number} tokens_served
 * @property {number} open_sessions
 * @property {number} api_running
 * @property {{budget_bytes: number, reserved_bytes: number, bytes_per_token: number, free_tokens: number} | null} kv
 * @property {number} uptime_s
 */

/**
 * @typedef {object} PeerView
 * @property {string} peer_id
 * @property {string} kind
 * @property {{model: string, start: number, end: number}[]} serves
 * @property {number} throughput
 * @property {number} kv_free_tokens
 * @property {string[]} signaling
 * @property {boolean} is_self
 */

/**
 * @typedef {object} ModelCoverage
 * @property {string} model
 * @property {number} blocks
 * @property {number} covered_blocks
 * @property {boolean} servable
 * @property {number[]} per_block
 * @property {"healthy" | "fragile" | "broken"} health
 */

/**
 * @typedef {object} SignalingNode
 * @property {string} url
 * @property {string | null} node_id
 * @property {boolean} connected
 * @property {boolean | null} healthy
 * @property {number | null} peers
 * @property {string[]} siblings
 */

/**
 * @typedef {object} MeshSnapshot
 * @property {number} at
 * @property {SignalingNode[]} signaling
 * @property {PeerView[]} peers
 * @property {ModelCoverage[]} models
 * @property {string | null} error
 */

/**
 * @typedef {object} Snapshot one event of /v1/node/events
 * @property {number} at
 * @property {NodeState} node
 * @property {Balance | null} balance
 * @property {string | null} balance_error
 * @property {MeshSnapshot} mesh
 */

/** @returns {PageConfig} */
export function pageConfig() {
  const script = document.getElementById("ai4all-config");
  return JSON.parse(script?.textContent || "{}");
}

/**
 * @param {string} id
 * @returns {HTMLElement}
 */
export function byId(id) {
  const element = document.getElementById(id);
  if (!element) throw new Error(`the page has no element #${id}`);
  return element;
}

/**
 * Ledger units as credits with three decimals, exactly (no float on the way).
 * @param {number} units
 * @param {number} [perCredit]
 */
export function credits(units, perCredit = 1000) {
  const sign = units < 0 ? "-" : "";
  const whole = Math.floor(Math.abs(units) / perCredit);
  const frac = String(Math.abs(units) % perCredit).padStart(String(perCredit - 1).length, "0");
  return `${sign}${whole.toLocaleString("en")}.${frac}`;
}

/** @param {string} peerId @returns {string} the first 8 hex digits, as every page names peers */
export function shortId(peerId) {
  return peerId.slice(0, 8);
}

/** @param {number} n */
export function count(n) {
  return n.toLocaleString("en");
}

/** @param {number} bytes */
export function mib(bytes) {
  return `${(bytes / 2 ** 20).toLocaleString("en", { maximumFractionDigits: 1 })} MiB`;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/**
 * An SVG element with attributes and children.
 * @param {string} tag
 * @param {Record<string, string | number>} [attrs]
 * @param {(Node | string)[]} children
 * @returns {SVGElement}
 */
export function svg(tag, attrs = {}, ...children) {
  const element = /** @type {SVGElement} */ (document.createElementNS(SVG_NS, tag));
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

/**
 * An HTML element with attributes and children.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Record<string, string>} [attrs]
 * @param {(Node | string)[]} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function html(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, value);
  element.append(...children);
  return element;
}

/**
 * Show an error of the API where the page keeps them; a 401 opens the API key form.
 * @param {unknown} error
 */
export function showError(error) {
  const box = byId("live-error");
  if (error instanceof ApiError && error.status === 401) byId("key-form").hidden = false;
  box.textContent = error instanceof Error ? error.message : String(error);
  box.hidden = false;
}

export function clearError() {
  byId("live-error").hidden = true;
}

/**
 * Keep the header live and hand each snapshot to the page.
 * @param {(snapshot: Snapshot) => void} [onSnapshot]
 * @returns {{latest: () => Snapshot | null}}
 */
export function startLive(onSnapshot = () => {}) {
  const config = pageConfig();
  /** @type {Snapshot | null} */
  let latest = null;
  const keyForm = /** @type {HTMLFormElement} */ (byId("key-form"));
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(/** @type {HTMLInputElement} */ (byId("key-input")).value.trim() || null);
    location.reload();
  });
  follow(
    config.events,
    (data, event) => {
      if (event !== "snapshot") return;
      latest = /** @type {Snapshot} */ (data);
      renderHeader(latest, config.units_per_credit);
      onSnapshot(latest);
    },
    {
      onOpen: clearError,
      onError: (error) => showError(new ApiError(error.status, `live updates stopped: ${error.message}`)),
    },
  );
  return { latest: () => latest };
}

/** @type {ReturnType<typeof setTimeout> | undefined} */
let deltaTimer;

/**
 * @param {Snapshot} snapshot
 * @param {number} perCredit
 */
function renderHeader(snapshot, perCredit) {
  const balance = byId("balance");
  const delta = byId("balance-delta");
  if (snapshot.balance) {
    const before = balance.dataset.units;
    const now = snapshot.balance.balance;
    if (before !== String(now)) {
      balance.textContent = credits(now, perCredit);
      balance.dataset.units = String(now);
      const b = snapshot.balance;
      balance.title = `granted ${credits(b.granted)} + earned ${credits(b.earned)} + bonuses ${credits(b.bonuses)} − spent ${credits(b.spent)}`;
      if (before) {
        const change = now - Number(before);
        delta.textContent = `${change > 0 ? "+" : ""}${credits(change, perCredit)}`;
        delta.className = `delta ${change > 0 ? "up" : "down"}`;
        clearTimeout(deltaTimer);
        deltaTimer = setTimeout(() => (delta.textContent = ""), 6000);
      }
    }
  } else {
    balance.textContent = "—";
    balance.title = snapshot.balance_error || "no ledger on this node";
  }
  const badge = byId("serving-badge");
  const node = snapshot.node;
  badge.textContent =
    node.state === "serving" ? `serving ${node.span}` : node.state === "paused" ? "paused" : "client only";
  badge.className = `badge ${node.state}`;
}

// @ts-check
/**
 * The dashboard: this node's numbers, the mesh as a picture (signaling nodes, peers, who announced
 * through whom), the blocks each peer serves over each model's layer axis with the coverage, and this
 * node's cumulative earnings as a line plot. Redrawn on every snapshot of `/v1/node/events`.
 */

import { getJson } from "./api.js";
import { byId, count, credits, html, mib, pageConfig, shortId, showError, startLive, svg } from "./page.js";

/** @typedef {import("./page.js").Snapshot} Snapshot */
/** @typedef {import("./page.js").MeshSnapshot} MeshSnapshot */
/** @typedef {import("./page.js").PeerView} PeerView */
/** @typedef {import("./page.js").ModelCoverage} ModelCoverage */
/** @typedef {{t: number, earned: number}} EarningsPoint */
/** @typedef {{peer_id: string, units_per_credit: number, since: number, now: number, earned: number, bonuses: number, points: EarningsPoint[]}} Earnings */

const config = pageConfig();
const MAX_WIDTH = 640;

/**
 * The drawing width of a figure: its box's width in CSS pixels (so text keeps its size on a phone),
 * between 300 and 640 units.
 * @param {Element} element the SVG, or a box the figure goes into
 */
function widthOf(element) {
  const box = element.closest(".figure") ?? element;
  return Math.round(Math.min(MAX_WIDTH, Math.max(300, box.clientWidth - 16)));
}

/** @type {number | null} */
let lastEarned = null;
let lastEarningsFetch = 0;

startLive((snapshot) => {
  renderCards(snapshot);
  renderMeshMap(snapshot.mesh);
  renderCoverage(snapshot.mesh);
  renderPeers(snapshot.mesh);
  const earned = snapshot.balance?.earned ?? 0;
  if (earned !== lastEarned || Date.now() - lastEarningsFetch > 15000) {
    lastEarned = earned;
    loadEarnings();
  }
});

/** @param {Snapshot} snapshot */
function renderCards(snapshot) {
  const node = snapshot.node;
  byId("d-serving").textContent =
    node.state === "serving"
      ? `blocks ${node.span} of ${node.model}`
      : node.state === "paused"
        ? `paused (span ${node.span})`
        : "nothing: this node only asks";
  byId("d-tokens").textContent = count(node.tokens_served);
  byId("d-sessions").textContent = `${node.open_sessions} served, ${node.api_running} generating`;
  byId("d-kv").textContent = node.kv
    ? `${count(node.kv.free_tokens)} tokens free of ${mib(node.kv.budget_bytes)}`
    : "—";
  const b = snapshot.balance;
  byId("d-balance").textContent = b
    ? `${credits(b.balance)} (earned ${credits(b.earned)}, spent ${credits(b.spent)})`
    : snapshot.balance_error || "—";
  byId("mesh-error").textContent = snapshot.mesh.error || "";
}

/**
 * Evenly spread `n` items over `width`.
 * @param {number} i
 * @param {number} n
 * @param {number} width
 */
function spread(i, n, width) {
  return ((i + 0.5) * width) / n;
}

/** @param {string} url */
function hostOf(url) {
  return url.replace(/^wss?:\/\//, "");
}

/** @param {MeshSnapshot} mesh */
function renderMeshMap(mesh) {
  const map = byId("mesh-map");
  const width = widthOf(map);
  const perRow = Math.max(3, Math.floor(width / 80));
  const sigY = 40;
  const peerRows = Math.max(1, Math.ceil(mesh.peers.length / perRow));
  const height = 150 + peerRows * 90;
  map.setAttribute("viewBox", `0 0 ${width} ${height}`);
  /** @type {Map<string, {x: number, y: number}>} */
  const sigAt = new Map();
  mesh.signaling.forEach((node, i) => sigAt.set(node.url, { x: spread(i, mesh.signaling.length, width), y: sigY }));
  const edges = svg("g", { class: "edges" });
  const drawn = new Set();
  for (const node of mesh.signaling) {
    for (const sibling of node.siblings) {
      const a = sigAt.get(node.url);
      const b = sigAt.get(sibling);
      const key = [node.url, sibling].sort().join(" ");
      if (a && b && !drawn.has(key)) {
        drawn.add(key);
        edges.append(svg("line", { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: "sibling" }));
      }
    }
  }
  const nodes = svg("g", { class: "nodes" });
  for (const node of mesh.signaling) {
    const at = /** @type {{x: number, y: number}} */ (sigAt.get(node.url));
    const state = node.healthy === false ? "down" : node.connected ? "connected" : "up";
    const w = Math.min(150, width / Math.max(1, mesh.signaling.length) - 10);
    nodes.append(
      svg(
        "g",
        { class: `signaling ${state}`, transform: `translate(${at.x},${at.y})` },
        svg("title", {}, `${node.url}${node.node_id ? ` (${node.node_id})` : ""}: ${state}`),
        svg("rect", { x: -w / 2, y: -20, width: w, height: 40, rx: 8 }),
        svg("text", { y: -3, "text-anchor": "middle" }, node.node_id || "signaling"),
        svg("text", { y: 13, "text-anchor": "middle", class: "small" }, hostOf(node.url)),
      ),
    );
  }
  mesh.peers.forEach((peer, i) => {
    const row = Math.floor(i / perRow);
    const inRow = Math.min(perRow, mesh.peers.length - row * perRow);
    const x = spread(i % perRow, inRow, width);
    const y = 150 + row * 90;
    const via = peer.signaling.map((url) => sigAt.get(url)).find(Boolean);
    if (via) edges.append(svg("line", { x1: x, y1: y - 18, x2: via.x, y2: via.y + 20, class: "announce" }));
    const spans = peer.serves.map((s) => `${s.start}-${s.end}`).join(",") || "none";
    nodes.append(
      svg(
        "g",
        {
          class: `peer ${peer.kind}${peer.is_self ? " self" : ""}${peer.serves.length ? "" : " idle"}`,
          transform: `translate(${x},${y})`,
        },
        svg("title", {}, `${peer.peer_id}${peer.is_self ? " (this node)" : ""}: ${peer.kind}, blocks ${spans}`),
        svg("circle", { r: 18 }),
        svg("text", { y: 4, "text-anchor": "middle", class: "small" }, spans),
        svg("text", { y: 34, "text-anchor": "middle", class: "peer-id" }, shortId(peer.peer_id)),
        svg("text", { y: 48, "text-anchor": "middle", class: "small" }, peer.is_self ? "this node" : peer.kind),
      ),
    );
  });
  map.replaceChildren(edges, nodes);
}

/** @param {MeshSnapshot} mesh */
function renderCoverage(mesh) {
  const box = byId("coverage");
  const width = Math.round(Math.min(MAX_WIDTH, Math.max(300, box.clientWidth - 16)));
  box.replaceChildren(...mesh.models.map((model) => coverageFigure(model, mesh.peers, width)));
}

/**
 * One model: a bar per peer over the layer axis, then the peers per block.
 * @param {ModelCoverage} model
 * @param {PeerView[]} peers
 * @param {number} width
 */
function coverageFigure(model, peers, width) {
  const left = 80;
  const right = 10;
  const rowH = 22;
  const rows = peers.flatMap((peer) =>
    peer.serves.filter((s) => s.model === model.model).map((span) => ({ peer, span })),
  );
  const axisY = 10 + rows.length * rowH + 8;
  const height = axisY + 60;
  const x = (/** @type {number} */ layer) => left + ((width - left - right) * layer) / Math.max(1, model.blocks);
  const figure = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `blocks of ${model.model} served by each peer`,
    class: "coverage-plot",
  });
  rows.forEach(({ peer, span }, i) => {
    const y = 10 + i * rowH;
    figure.append(
      svg("text", { x: left - 6, y: y + 14, "text-anchor": "end", class: "peer-id" }, shortId(peer.peer_id)),
      svg(
        "rect",
        {
          x: x(span.start),
          y,
          width: Math.max(2, x(span.end) - x(span.start) - 2),
          height: rowH - 6,
          rx: 3,
          class: `span-bar${peer.is_self ? " self" : ""}`,
        },
        svg("title", {}, `${peer.peer_id}: blocks ${span.start}-${span.end}`),
      ),
    );
  });
  for (let block = 0; block < model.blocks; block++) {
    const peersHere = model.per_block[block] ?? 0;
    const level = peersHere === 0 ? "none" : peersHere === 1 ? "one" : "many";
    const cell = x(block + 1) - x(block);
    figure.append(
      svg(
        "rect",
        { x: x(block) + 1, y: axisY, width: Math.max(1, cell - 2), height: 18, class: `block ${level}` },
        svg("title", {}, `block ${block}: ${peersHere} peer(s)`),
      ),
    );
    const labelled = cell >= 14 || block % Math.ceil(14 / cell) === 0;
    if (cell >= 14) {
      figure.append(svg("text", { x: x(block + 0.5), y: axisY + 13, "text-anchor": "middle", class: "count" }, String(peersHere)));
    }
    if (labelled) {
      figure.append(svg("text", { x: x(block + 0.5), y: axisY + 32, "text-anchor": "middle", class: "small" }, String(block)));
    }
  }
  figure.append(svg("text", { x: left - 6, y: axisY + 14, "text-anchor": "end", class: "small" }, "peers/block"));
  figure.append(svg("text", { x: left - 6, y: axisY + 32, "text-anchor": "end", class: "small" }, "layer"));
  const summary = html(
    "p",
    { class: `coverage-summary ${model.health}`, "data-model": model.model },
    html("strong", {}, model.model),
    `: ${model.covered_blocks} of ${model.blocks} blocks covered · ${model.health}` +
      (model.servable ? "" : " (not servable: some blocks have no peer)"),
  );
  return html("div", { class: "figure" }, summary, figure);
}

/** @param {MeshSnapshot} mesh */
function renderPeers(mesh) {
  const body = /** @type {HTMLTableElement} */ (byId("peers")).tBodies[0];
  body.replaceChildren(
    ...mesh.peers.map((peer) =>
      html(
        "tr",
        { "data-peer": peer.peer_id, class: peer.is_self ? "self" : "" },
        html("td", { title: peer.peer_id }, html("code", {}, shortId(peer.peer_id)), peer.is_self ? " (this node)" : ""),
        html("td", {}, peer.kind),
        html("td", {}, peer.serves.map((s) => `${s.model} ${s.start}-${s.end}`).join(", ") || "none (paused)"),
        html("td", {}, count(Math.round(peer.throughput))),
        html("td", {}, count(peer.kv_free_tokens)),
        html("td", {}, peer.signaling.map(hostOf).join(", ")),
      ),
    ),
  );
}

async function loadEarnings() {
  lastEarningsFetch = Date.now();
  try {
    renderEarnings(/** @type {Earnings} */ (await getJson(`${config.api_base}/node/earnings`)));
  } catch (error) {
    showError(error);
  }
}

/** @param {number} t seconds since the epoch */
function clock(t) {
  return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
}

/** @type {Earnings | null} */
let shownEarnings = null;
addEventListener("resize", () => shownEarnings && renderEarnings(shownEarnings));

/** @param {Earnings} earnings */
function renderEarnings(earnings) {
  shownEarnings = earnings;
  const plot = byId("earnings-plot");
  const width = widthOf(plot);
  const per = earnings.units_per_credit;
  const [left, right, top, bottom] = [70, 16, 14, 30];
  const height = 200;
  plot.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const t0 = earnings.since;
  const t1 = Math.max(earnings.now, t0 + 1);
  const top1 = Math.max(earnings.earned, per);
  const x = (/** @type {number} */ t) => left + ((width - left - right) * (t - t0)) / (t1 - t0);
  const y = (/** @type {number} */ v) => height - bottom - ((height - top - bottom) * v) / top1;
  // A step line: earnings change at each receipt and stay flat in between.
  const points = [[x(t0), y(0)]];
  let value = 0;
  for (const p of earnings.points) {
    points.push([x(p.t), y(value)], [x(p.t), y(p.earned)]);
    value = p.earned;
  }
  points.push([x(t1), y(value)]);
  plot.replaceChildren(
    svg("line", { x1: left, y1: y(0), x2: width - right, y2: y(0), class: "axis" }),
    svg("line", { x1: left, y1: top, x2: left, y2: y(0), class: "axis" }),
    svg("text", { x: left - 6, y: y(0) + 4, "text-anchor": "end", class: "small" }, "0"),
    svg("text", { x: left - 6, y: y(top1) + 4, "text-anchor": "end", class: "small" }, credits(top1, per)),
    svg("text", { x: left, y: height - 8, class: "small" }, clock(t0)),
    svg("text", { x: width - right, y: height - 8, "text-anchor": "end", class: "small" }, clock(t1)),
    svg("polyline", { points: points.map((p) => p.join(",")).join(" "), class: "earned" }),
    ...earnings.points.map((p) => svg("circle", { cx: x(p.t), cy: y(p.earned), r: 3, class: "receipt" })),
  );
  byId("earnings-note").textContent = earnings.points.length
    ? `${credits(earnings.earned, per)} credits earned from ${earnings.points.length} ` +
      `receipt${earnings.points.length === 1 ? "" : "s"} ` +
      `(plus ${credits(earnings.bonuses, per)} in rarity and uptime bonuses).`
    : "Nothing earned yet: earnings come from co-signed receipts for blocks this node serves to others.";
}

// Before the first snapshot arrives, the plot already shows what the ledger holds.
loadEarnings();

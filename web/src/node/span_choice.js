// @ts-check
/**
 * Which span a browser node serves: the least-served run of block shards that fits its memory budget
 * (weights plus KV room for PLAN_SESSIONS sessions), and the block shards that make up a span. The twin
 * of `python_peer/core/memory_budget.py` and `python_peer/block_selection.py`, line for line; both follow
 * `tests/vectors/span_choice.json`.
 */

import { KV_DTYPE_BYTES, MEMORY_FIELD, PLAN_CONTEXT, PLAN_SESSIONS } from '../protocol/constants.js';
import { MIB, NodeError } from './config.js';

const GIB = 2 ** 30;

/** @typedef {{start: number, end: number}} SpanChoice */
/** @typedef {{weightBytes: number[], kvBytesPerToken: number[], context: number}} BlockFigures */
/**
 * What a span needs: its weights plus KV room for `sessions` sessions of `context` tokens.
 * @typedef {{span: SpanChoice, weights: number, kv: number, sessions: number, context: number, total: number}} SpanNeed
 */

/**
 * Bytes as GiB with one decimal (MiB below 1 GiB, or in `unit`'s), as `gib` of memory_budget.py.
 * @param {number} n
 * @param {number} [unit]
 */
export function gib(n, unit) {
  const u = unit ?? (n >= GIB ? GIB : MIB);
  return `${(n / u).toFixed(1)} ${u === GIB ? 'GiB' : 'MiB'}`;
}

/** @param {unknown} v */
const isCount = (v) => Number.isSafeInteger(v) && /** @type {number} */ (v) >= 0;

/** @param {Record<string, unknown>} config */
function kvBytesPerToken(config) {
  const heads = config.num_key_value_heads;
  const dim = config.head_dim;
  if (!(isCount(heads) && isCount(dim) && Number(heads) > 0 && Number(dim) > 0)) {
    throw new NodeError('model.config needs positive integers num_key_value_heads and head_dim');
  }
  return 2 * Number(heads) * Number(dim) * KV_DTYPE_BYTES;
}

/**
 * The most positions the model takes (`max_position_embeddings`, GPT-2's `n_positions`), or null when its
 * config does not say: no session may hold more tokens, on a peer or at a client (`model_context`).
 * @param {Record<string, unknown>} config
 * @returns {number | null}
 */
export function modelContext(config) {
  for (const name of ['max_position_embeddings', 'n_positions']) {
    const value = config[name];
    if (Number.isSafeInteger(value) && Number(value) > 0) return Number(value);
  }
  return null;
}

/** @param {Record<string, unknown>} config */
function planContext(config) {
  const context = modelContext(config);
  return context === null ? PLAN_CONTEXT : Math.min(PLAN_CONTEXT, context);
}

/**
 * The block shards, sorted, each with the bytes of all the files it lists (the `.onnx` and its external
 * data; a format-1 entry is its `.onnx` alone). The list itself is checked when the files are fetched
 * (`runtime/download.js`), where a file of another size is refused.
 * @param {{shards: any[]}} manifest
 * @returns {{start: number, end: number, bytes: number}[]}
 */
const blockShards = (manifest) =>
  manifest.shards
    .filter((s) => s.kind === 'blocks')
    .sort((a, b) => a.start - b.start)
    .map((s) => ({
      start: s.start,
      end: s.end,
      bytes: Array.isArray(s.files) ? s.files.reduce((/** @type {number} */ sum, /** @type {any} */ f) => sum + Number(f?.bytes), 0) : s.bytes,
    }));

/**
 * The manifest's per-block memory figures, checked against its config and shard files as
 * `BlockFigures.from_manifest`; a manifest without them gets those its shard sizes and config imply.
 * @param {any} manifest
 * @returns {BlockFigures}
 */
export function blockFigures(manifest) {
  const layers = manifest.model.config.num_layers;
  const shards = blockShards(manifest);
  const kv = kvBytesPerToken(manifest.model.config);
  const derivedWeights = new Array(layers).fill(0);
  for (const { start, end, bytes } of shards) {
    const base = Math.floor(bytes / (end - start));
    const extra = bytes - base * (end - start);
    for (let i = 0; i < end - start; i++) derivedWeights[start + i] = base + (i < extra ? 1 : 0);
  }
  const stated = manifest[MEMORY_FIELD] ?? { block_weight_bytes: derivedWeights, kv_bytes_per_token: new Array(layers).fill(kv) };
  if (stated === null || typeof stated !== 'object' || Array.isArray(stated)) {
    throw new NodeError(`manifest '${MEMORY_FIELD}' must be an object`);
  }
  for (const name of ['block_weight_bytes', 'kv_bytes_per_token']) {
    const values = stated[name];
    if (!Array.isArray(values) || values.length !== layers || !values.every(isCount)) {
      throw new NodeError(`manifest ${MEMORY_FIELD}.${name} must list ${layers} non-negative integers, one per block`);
    }
  }
  /** @type {number[]} */
  const weights = stated.block_weight_bytes;
  /** @type {number[]} */
  const kvs = stated.kv_bytes_per_token;
  if (!kvs.every((v) => v === kv)) {
    throw new NodeError(
      `manifest ${MEMORY_FIELD}.kv_bytes_per_token ${kvs[0] ?? 0} does not match its config ` +
        `(${kv} = 2 x num_key_value_heads x head_dim x ${KV_DTYPE_BYTES})`,
    );
  }
  for (const { start, end, bytes } of shards) {
    const statedBytes = weights.slice(start, end).reduce((a, b) => a + b, 0);
    if (statedBytes < bytes) {
      throw new NodeError(
        `manifest ${MEMORY_FIELD}.block_weight_bytes states ${statedBytes} bytes for blocks ${start}-${end}, ` +
          `less than their shard file's ${bytes}`,
      );
    }
  }
  return { weightBytes: weights, kvBytesPerToken: kvs, context: planContext(manifest.model.config) };
}

/**
 * @param {BlockFigures} figures
 * @param {SpanChoice} span
 * @param {number} [sessions]
 * @returns {SpanNeed}
 */
export function spanNeed(figures, span, sessions = PLAN_SESSIONS) {
  const sum = (/** @type {number[]} */ xs) => xs.slice(span.start, span.end).reduce((a, b) => a + b, 0);
  const weights = sum(figures.weightBytes);
  const kv = sum(figures.kvBytesPerToken) * sessions * figures.context;
  return { span: { start: span.start, end: span.end }, weights, kv, sessions, context: figures.context, total: weights + kv };
}

/** "span A-B needs X (W weights + K KV for N sessions of C tokens)". @param {SpanNeed} need */
export function describeNeed(need) {
  const unit = need.total >= GIB ? GIB : MIB;
  return (
    `span ${need.span.start}-${need.span.end} needs ${gib(need.total, unit)} (${gib(need.weights, unit)} weights + ` +
    `${gib(need.kv, unit)} KV for ${need.sessions} sessions of ${need.context} tokens)`
  );
}

/**
 * What `span` needs; NodeError in one line when it is over `budgetBytes`.
 * @param {any} manifest
 * @param {SpanChoice} span
 * @param {number} budgetBytes
 */
export function checkSpanFits(manifest, span, budgetBytes) {
  const layers = manifest.model.config.num_layers;
  if (span.end > layers) throw new NodeError(`span ${span.start}-${span.end} runs past the last layer of ${manifest.model.name} (0-${layers})`);
  const need = spanNeed(blockFigures(manifest), span);
  if (need.total > budgetBytes) throw new NodeError(`${describeNeed(need)}; budget is ${gib(budgetBytes)}`);
  return need;
}

/**
 * The least-served run of `spans` (sorted, each with its count of live servers) that fits `budgetBytes`:
 * fewest servers on its least-served shard, then most shards at that count, then fewest shards, then earliest.
 * @param {SpanChoice[]} spans
 * @param {number[]} counts
 * @param {BlockFigures} figures
 * @param {number} budgetBytes
 * @param {string} model
 * @returns {SpanNeed}
 */
export function chooseSpan(spans, counts, figures, budgetBytes, model) {
  /** @type {[number[], SpanNeed] | null} */
  let best = null;
  for (let i = 0; i < spans.length; i++) {
    for (let j = i + 1; j <= spans.length; j++) {
      const need = spanNeed(figures, { start: spans[i].start, end: spans[j - 1].end });
      if (need.total > budgetBytes) continue;
      const run = counts.slice(i, j);
      const least = Math.min(...run);
      const key = [least, -run.filter((c) => c === least).length, j - i, need.span.start];
      if (best === null || lexLess(key, best[0])) best = [key, need];
    }
  }
  if (best === null) {
    const needs = spans.map((s) => spanNeed(figures, s));
    const smallest = needs.reduce((a, b) => (b.total < a.total ? b : a));
    throw new NodeError(
      `no span of ${model} fits a memory budget of ${gib(budgetBytes)}, not even its smallest shard: ` +
        `${describeNeed(smallest)}; raise the budget or export smaller spans`,
    );
  }
  return best[1];
}

/** @param {number[]} a @param {number[]} b */
function lexLess(a, b) {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i];
  return false;
}

/**
 * How many distinct peers serve each block shard (a wider span counts for each), as `served_counts`.
 * @param {any} manifest
 * @param {import('../signaling/client.js').Announcement[]} announcements
 */
export function servedCounts(manifest, announcements) {
  const name = manifest.model.name;
  return blockShards(manifest).map(
    (shard) =>
      new Set(
        announcements
          .filter((a) => a.serves.some((s) => s.model === name && s.start <= shard.start && shard.end <= s.end))
          .map((a) => a.peer_id),
      ).size,
  );
}

/**
 * The least-served run of the manifest's block shards that fits `budgetBytes`, with what it needs.
 * @param {any} manifest
 * @param {import('../signaling/client.js').Announcement[]} announcements
 * @param {number} budgetBytes
 * @returns {SpanNeed}
 */
export function leastServedChoice(manifest, announcements, budgetBytes) {
  const blocks = blockShards(manifest);
  if (!blocks.length) throw new NodeError(`the manifest of ${manifest.model.name} has no block shards`);
  const spans = blocks.map((s) => ({ start: s.start, end: s.end }));
  return chooseSpan(spans, servedCounts(manifest, announcements), blockFigures(manifest), budgetBytes, manifest.model.name);
}

/**
 * The span of `leastServedChoice`.
 * @param {any} manifest
 * @param {import('../signaling/client.js').Announcement[]} announcements
 * @param {number} budgetBytes
 * @returns {SpanChoice}
 */
export function leastServedSpan(manifest, announcements, budgetBytes) {
  return leastServedChoice(manifest, announcements, budgetBytes).span;
}

/**
 * The block shards that make up `span` exactly, in order; NodeError if it is not a run of them.
 * @param {{shards: import('../runtime/shard.js').ShardEntry[]}} manifest
 * @param {SpanChoice} span
 */
export function spanShards(manifest, span) {
  const shards = manifest.shards
    .filter((s) => s.kind === 'blocks' && span.start <= s.start && s.end <= span.end)
    .sort((a, b) => a.start - b.start);
  const contiguous = shards.every((s, i) => i === 0 || shards[i - 1].end === s.start);
  if (!shards.length || shards[0].start !== span.start || shards[shards.length - 1].end !== span.end || !contiguous) {
    const available = manifest.shards.filter((s) => s.kind === 'blocks').map((s) => `${s.start}-${s.end}`);
    throw new NodeError(`span ${span.start}-${span.end} is not a run of this model's block shards (${available.join(', ')})`);
  }
  return shards;
}

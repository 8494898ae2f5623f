// @ts-check
/**
 * Which span a browser node serves: the least-served block shard that fits its memory budget (as
 * `python_peer/block_selection.py`), and the block shards that make up a span.
 */

import { shardTotalBytes } from '../runtime/download.js';
import { MIB, NodeError } from './config.js';

/** @typedef {{start: number, end: number}} SpanChoice */

/**
 * The least-served block shard of the manifest whose files (its `.onnx` and `.onnx.data`) fit `budgetBytes`, as
 * `python_peer/block_selection.py`: counts are distinct peers whose announced spans cover the shard,
 * ties go to the earlier shard.
 * @param {{model: {name: string}, shards: {file: string, sha256: string, kind: string, start: number, end: number, bytes: number, files?: unknown}[]}} manifest
 * @param {import('../signaling/client.js').Announcement[]} announcements
 * @param {number} budgetBytes
 * @returns {SpanChoice}
 */
export function leastServedSpan(manifest, announcements, budgetBytes) {
  const name = manifest.model.name;
  const blocks = manifest.shards.filter((s) => s.kind === 'blocks').sort((a, b) => a.start - b.start);
  if (!blocks.length) throw new NodeError(`the manifest of ${name} has no block shards`);
  const count = (/** @type {{start: number, end: number}} */ shard) =>
    new Set(
      announcements
        .filter((a) => a.serves.some((s) => s.model === name && s.start <= shard.start && shard.end <= s.end))
        .map((a) => a.peer_id),
    ).size;
  const fitting = blocks.filter((s) => shardTotalBytes(s) <= budgetBytes);
  if (!fitting.length) {
    const smallest = Math.min(...blocks.map((s) => shardTotalBytes(s)));
    throw new NodeError(
      `no block shard of ${name} fits a memory budget of ${(budgetBytes / MIB).toFixed(0)} MiB ` +
        `(the smallest needs ${(smallest / MIB).toFixed(0)} MiB): raise the memory budget`,
    );
  }
  let best = fitting[0];
  let bestCount = count(best);
  for (const shard of fitting.slice(1)) {
    const n = count(shard);
    if (n < bestCount) [best, bestCount] = [shard, n];
  }
  return { start: best.start, end: best.end };
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

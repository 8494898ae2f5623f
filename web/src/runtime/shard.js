// @ts-check
/**
 * Shards in the browser, mirroring `python_peer/runner.py`. This module gathers the runtime's public
 * names; each lives in the file named after what it holds:
 *
 * - `download.js`: `fetchShard` (a streamed download checked against the manifest's size and sha256
 *   before a byte reaches onnxruntime), `shardFiles` (every file a shard needs: its `.onnx`, then at
 *   most one external-data file `<file>.data`), `fetchShardFiles` (all of them, each verified),
 *   `sha256Hex`.
 * - `shard_runner.js`: `ShardRunner` (one verified shard in one onnxruntime session, inputs checked
 *   before onnxruntime sees them), the wire names of inputs and outputs, the manifest's types.
 * - `admission.js`: `admitShard`, the admission rules on a shard's bytes (ONNX only, allow-listed
 *   operators, known versions), and `AdmissionError`.
 * - `blocks.js`: `BlocksRunner`, a blocks shard with per-session KV caches.
 * - `client_shards.js`: `EmbedRunner` and `HeadRunner`, the client's own shards.
 * - `onnx.js`: the one module that touches onnxruntime-web; the errors `ShardError`,
 *   `ShardInputError`, `SessionError`.
 * - `tokenizer.js`: the tokenizer and the chat template.
 *
 * No DOM: this runs in a page or a Worker.
 */

export { AdmissionError, admitShard } from './admission.js';
export { SessionError, ShardError, ShardInputError } from './onnx.js';
export { EXTERNAL_DATA_SUFFIX, fetchShard, fetchShardFiles, sha256Hex, shardFiles, shardTotalBytes } from './download.js';
export {
  ATTENTION_MASK,
  HIDDEN_IN,
  HIDDEN_OUT,
  INPUT_IDS,
  LOGITS,
  POSITION_IDS,
  ShardRunner,
  pastKey,
  pastValue,
  presentKey,
  presentValue,
} from './shard_runner.js';
export { BlocksRunner } from './blocks.js';
export { EmbedRunner, HeadRunner } from './client_shards.js';

/** @typedef {import('./shard_runner.js').TensorSpec} TensorSpec */
/** @typedef {import('./shard_runner.js').ShardEntry} ShardEntry */
/** @typedef {import('./shard_runner.js').Manifest} Manifest */
/** @typedef {import('./shard_runner.js').Float32Tensor} Float32Tensor */
/** @typedef {import('./shard_runner.js').LoadOptions} LoadOptions */
/** @typedef {import('./shard_runner.js').OrtTensor} OrtTensor */
/** @typedef {import('./download.js').ProgressCallback} ProgressCallback */
/** @typedef {import('./download.js').ShardFile} ShardFile */
/** @typedef {import('./download.js').FetchFile} FetchFile */

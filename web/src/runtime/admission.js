// @ts-check
/**
 * Admission in the browser: the rules on a shard's `.onnx` that `python_peer/core/admission.py`
 * (`check_operators`) applies, checked on its bytes before onnxruntime-web sees them. The file must be an
 * ONNX `ModelProto` (read strictly: no pickle, no archive, no truncated file), import only the default
 * ONNX domain and `com.microsoft` at known versions, in a known IR version, with no model-local
 * functions, training graphs or nested graphs, and every node's operator on the allow-list of the
 * shard's kind. The lists and versions come from Python (`protocol/constants.js`, generated), and both
 * suites check the golden vectors of `tests/vectors/admission/`. The graph's declared inputs and outputs
 * are checked by the native side only; onnxruntime-web refuses feeds that do not match them.
 *
 * The protobuf walk mirrors `python_peer/core/onnx_external.py` and `onnx_summary.py` field for field
 * (onnx/onnx.proto3 field numbers). No DOM.
 */

import {
  ALLOWED_DOMAINS,
  ALLOWED_MS_OPS,
  ALLOWED_OPS,
  IR_VERSIONS,
  MS_DOMAIN,
  OPSET_RANGES,
} from '../protocol/constants.js';
import { ShardError } from './onnx.js';

/** ModelProto field number -> protobuf wire type (0 varint, 2 length-delimited). */
const MODEL_FIELDS = new Map([[1, 0], [2, 2], [3, 2], [4, 2], [5, 0], [6, 2], [7, 2], [8, 2], [14, 2], [20, 2], [25, 2], [26, 2]]);
const IR_VERSION = 1, GRAPH = 7, OPSET_IMPORT = 8, TRAINING_INFO = 20, FUNCTIONS = 25;
const OPSET_DOMAIN = 1, OPSET_VERSION = 2;
const GRAPH_NODE = 1;
const NODE_OP_TYPE = 4, NODE_ATTRIBUTE = 5, NODE_DOMAIN = 7;
const ATTR_GRAPH = 6, ATTR_GRAPHS = 11;
const MAX_GRAPH_DEPTH = 64; // _MAX_DEPTH of onnx_external.py: nested graphs a hostile file may not exceed

/** A shard that breaks an admission rule; `rule` names it, as the native `AdmissionError` does. */
export class AdmissionError extends ShardError {
  /**
   * @param {string} rule
   * @param {string} message
   */
  constructor(rule, message) {
    super(`admission rule ${rule}: ${message}`);
    this.rule = rule;
  }
}

/**
 * @typedef {{number: number, wire: number, value: number | Uint8Array}} Field
 * @typedef {{irVersion: number, opsets: [string, number][], operators: [string, string][],
 *   hasFunctions: boolean, hasTrainingInfo: boolean, hasSubgraphs: boolean}} OnnxSummary
 */

/**
 * @param {Uint8Array} data
 * @param {number} pos
 * @returns {[number, number]}
 */
function varint(data, pos) {
  let result = 0;
  let scale = 1;
  for (let shift = 0; ; shift += 7) {
    if (shift > 63) throw new AdmissionError('onnx_only', 'the ONNX file holds a malformed number: not an ONNX model');
    if (pos >= data.length) throw new AdmissionError('onnx_only', 'the ONNX file ends inside a number: truncated or not an ONNX model');
    const byte = data[pos++];
    result += (byte & 0x7f) * scale;
    scale *= 128;
    if (!(byte & 0x80)) return [result, pos];
  }
}

/**
 * The fields of one message, as `onnx_external._fields` yields them (fixed-width fields are skipped).
 * @param {Uint8Array} data
 * @returns {Field[]}
 */
function fields(data) {
  /** @type {Field[]} */
  const out = [];
  let pos = 0;
  while (pos < data.length) {
    let key;
    [key, pos] = varint(data, pos);
    const number = Math.floor(key / 8);
    const wire = key % 8;
    if (wire === 0) {
      let value;
      [value, pos] = varint(data, pos);
      out.push({ number, wire, value });
    } else if (wire === 2) {
      let length;
      [length, pos] = varint(data, pos);
      if (pos + length > data.length) throw new AdmissionError('onnx_only', 'the ONNX file ends inside a field: truncated or not an ONNX model');
      out.push({ number, wire, value: data.subarray(pos, pos + length) });
      pos += length;
    } else if (wire === 1 || wire === 5) {
      pos += wire === 1 ? 8 : 4;
      if (pos > data.length) throw new AdmissionError('onnx_only', 'the ONNX file ends inside a field: truncated or not an ONNX model');
    } else {
      throw new AdmissionError('onnx_only', `the ONNX file uses protobuf wire type ${wire}: not an ONNX model`);
    }
  }
  return out;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });

/**
 * @param {number | Uint8Array} value
 * @returns {string}
 */
function text(value) {
  if (!(value instanceof Uint8Array)) throw new AdmissionError('onnx_only', 'a string field of the ONNX file holds a number: not an ONNX model');
  try {
    return UTF8.decode(value);
  } catch {
    throw new AdmissionError('onnx_only', 'a string field of the ONNX file is not UTF-8: not an ONNX model');
  }
}

/**
 * Walk a graph's nodes (and nested graphs) into `operators`; returns whether any nested graph was seen.
 * @param {Uint8Array} data
 * @param {number} depth
 * @param {Set<string>} operators `domain\u0000op_type`
 * @returns {boolean}
 */
function walkGraph(data, depth, operators) {
  if (depth > MAX_GRAPH_DEPTH) throw new AdmissionError('onnx_only', `the ONNX file nests graphs deeper than ${MAX_GRAPH_DEPTH}`);
  let nested = false;
  for (const field of fields(data)) {
    if (field.number !== GRAPH_NODE || !(field.value instanceof Uint8Array)) continue;
    let opType = '';
    let domain = '';
    for (const item of fields(field.value)) {
      if (item.number === NODE_OP_TYPE) opType = text(item.value);
      else if (item.number === NODE_DOMAIN) domain = text(item.value);
      else if (item.number === NODE_ATTRIBUTE && item.value instanceof Uint8Array) {
        for (const attr of fields(item.value)) {
          if ((attr.number === ATTR_GRAPH || attr.number === ATTR_GRAPHS) && attr.value instanceof Uint8Array) {
            nested = true;
            walkGraph(attr.value, depth + 1, operators);
          }
        }
      }
    }
    operators.add(`${domain}\u0000${opType}`);
  }
  return nested;
}

/**
 * What admission needs of a serialized `ModelProto`; anything else is refused under rule `onnx_only`.
 * @param {Uint8Array} bytes
 * @returns {OnnxSummary}
 */
export function summarize(bytes) {
  if (bytes.length === 0) throw new AdmissionError('onnx_only', 'the file is empty: not an ONNX model');
  /** @type {number | null} */
  let irVersion = null;
  /** @type {Uint8Array[]} */
  const graphs = [];
  /** @type {[string, number][]} */
  const opsets = [];
  let hasFunctions = false;
  let hasTrainingInfo = false;
  for (const field of fields(bytes)) {
    const expected = MODEL_FIELDS.get(field.number);
    if (expected === undefined || expected !== field.wire) {
      throw new AdmissionError(
        'onnx_only',
        `the file holds protobuf field ${field.number} (wire type ${field.wire}), which an ONNX ModelProto does not have: ` +
          'not an ONNX model (a pickle, an archive or another format?)',
      );
    }
    if (field.number === IR_VERSION && typeof field.value === 'number') irVersion = field.value;
    else if (field.number === GRAPH && field.value instanceof Uint8Array) graphs.push(field.value);
    else if (field.number === OPSET_IMPORT && field.value instanceof Uint8Array) {
      let domain = '';
      let version = 0;
      for (const item of fields(field.value)) {
        if (item.number === OPSET_DOMAIN) domain = text(item.value);
        else if (item.number === OPSET_VERSION && typeof item.value === 'number') version = item.value;
      }
      opsets.push([domain, version]);
    } else if (field.number === FUNCTIONS) hasFunctions = true;
    else if (field.number === TRAINING_INFO) hasTrainingInfo = true;
  }
  if (irVersion === null) throw new AdmissionError('onnx_only', 'the file names no ONNX IR version: not an ONNX model');
  if (graphs.length !== 1) throw new AdmissionError('onnx_only', `the file holds ${graphs.length} graphs, not one: not an ONNX model`);
  /** @type {Set<string>} */
  const found = new Set();
  const hasSubgraphs = walkGraph(graphs[0], 0, found);
  const operators = [...found].sort().map((key) => /** @type {[string, string]} */ (key.split('\u0000')));
  return { irVersion, opsets, operators, hasFunctions, hasTrainingInfo, hasSubgraphs };
}

/** @param {string} name */
const normal = (name) => (name === 'ai.onnx' ? '' : name);

/**
 * Whether a node of `domain`/`opType` may appear in a shard of `kind`.
 * @param {string} kind
 * @param {string} domain
 * @param {string} opType
 */
export function allowed(kind, domain, opType) {
  const table = normal(domain) === '' ? ALLOWED_OPS : domain === MS_DOMAIN ? ALLOWED_MS_OPS : null;
  const list = table ? /** @type {Record<string, readonly string[]>} */ (table)[kind] : undefined;
  return Array.isArray(list) && list.includes(opType);
}

/**
 * Refuse a shard whose versions, operator sets or operators break a rule (the order of Python's checks).
 * @param {OnnxSummary} summary
 * @param {string} kind `embed`, `blocks` or `head`
 * @param {string} shard the shard's file name, for the message
 */
export function checkOperators(summary, kind, shard) {
  if (!IR_VERSIONS.includes(summary.irVersion)) {
    throw new AdmissionError('format_version', `shard ${shard}: ONNX IR version ${summary.irVersion} is not one this build admits (${IR_VERSIONS.join(', ')})`);
  }
  if (summary.hasFunctions) throw new AdmissionError('no_custom_ops', `shard ${shard} defines model-local functions (custom operators)`);
  if (summary.hasTrainingInfo) throw new AdmissionError('onnx_only', `shard ${shard} holds training graphs; a shard is inference only`);
  const ranges = /** @type {Record<string, readonly number[]>} */ (OPSET_RANGES);
  /** @type {Set<string>} */
  const seen = new Set();
  for (const [domain, version] of summary.opsets) {
    const name = normal(domain);
    if (!Object.hasOwn(ranges, name)) {
      throw new AdmissionError('no_custom_ops', `shard ${shard} imports operator set ${JSON.stringify(domain)}: only the default ONNX domain and ${MS_DOMAIN} are admitted`);
    }
    const [low, high] = ranges[name];
    if (version < low || version > high) {
      throw new AdmissionError('format_version', `shard ${shard}: operator set ${name || 'ai.onnx'} version ${version} is outside ${low}-${high}`);
    }
    if (seen.has(name)) throw new AdmissionError('onnx_only', `shard ${shard} imports operator set ${name || 'ai.onnx'} twice`);
    seen.add(name);
  }
  if (!seen.has('')) throw new AdmissionError('format_version', `shard ${shard} imports no version of the default ONNX domain`);
  for (const [rawDomain, opType] of summary.operators) {
    const domain = normal(rawDomain);
    if (!ALLOWED_DOMAINS.includes(domain)) {
      throw new AdmissionError('no_custom_ops', `shard ${shard}: operator ${opType} is in the custom domain ${JSON.stringify(domain)}`);
    }
    if (!seen.has(domain)) {
      throw new AdmissionError('format_version', `shard ${shard}: operator ${opType} uses domain ${JSON.stringify(domain)}, which it does not import`);
    }
    if (!allowed(kind, domain, opType)) {
      throw new AdmissionError('operator_allowed', `shard ${shard}: operator ${domain ? `${domain}.` : ''}${opType} is not on the allow-list of ${kind} shards`);
    }
  }
  if (summary.hasSubgraphs) throw new AdmissionError('operator_allowed', `shard ${shard} holds nested graphs; no admitted operator has one`);
}

/**
 * Admit the `.onnx` bytes of a manifest entry, or throw `AdmissionError` naming the rule and the shard.
 * @param {Uint8Array} bytes
 * @param {{file: string, kind: string}} entry
 */
export function admitShard(bytes, entry) {
  /** @type {OnnxSummary} */
  let summary;
  try {
    summary = summarize(bytes);
  } catch (error) {
    if (error instanceof AdmissionError) {
      throw new AdmissionError(error.rule, `shard ${entry.file}: ${error.message.replace(/^admission rule [a-z_]+: /, '')}`);
    }
    throw error;
  }
  checkOperators(summary, entry.kind, entry.file);
}

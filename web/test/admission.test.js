// @ts-check
/**
 * The browser's admission rules agree with Python's on the golden vectors (tests/vectors/admission/,
 * written by tests/vectors/generate_admission.py; tests/test_admission.py checks the same verdicts with
 * python_peer/core/admission.py): each file is admitted or refused under the same rule.
 */
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';

import { AdmissionError, admitShard, allowed } from '../src/runtime/admission.js';

const DIR = new URL('../../tests/vectors/admission/', import.meta.url);
/** @type {{file: string, kind: string, rule: string | null}[]} */
const VECTORS = JSON.parse(await readFile(new URL('index.json', DIR), 'utf8'));

test('every golden vector gets the verdict Python gives it', async () => {
  assert.ok(VECTORS.length >= 10);
  for (const vector of VECTORS) {
    const bytes = new Uint8Array(await readFile(new URL(vector.file, DIR)));
    /** @type {string | null} */
    let rule = null;
    try {
      admitShard(bytes, { file: vector.file, kind: vector.kind });
    } catch (error) {
      assert.ok(error instanceof AdmissionError, `${vector.file}: ${error}`);
      assert.match(error.message, new RegExp(`^admission rule ${error.rule}: shard ${vector.file}`));
      rule = error.rule;
    }
    assert.equal(rule, vector.rule, vector.file);
  }
});

test('the allow-lists are per kind and come from Python', () => {
  assert.ok(allowed('blocks', 'com.microsoft', 'MatMulNBits') && !allowed('embed', 'com.microsoft', 'MatMulNBits'));
  assert.ok(allowed('blocks', 'ai.onnx', 'Softmax') && !allowed('head', '', 'Softmax'));
  assert.ok(!allowed('blocks', '', 'Loop') && !allowed('blocks', 'ai4all.evil', 'Add') && !allowed('nope', '', 'Add'));
});

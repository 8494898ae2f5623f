// @ts-check
/**
 * The browser's mesh client (web/src/client/mesh_client.js, session.js, hop.js) against in-memory span
 * servers: routing through a chain, failover with replay, payment refusal, bad answers. No browser, no
 * process: fake links that encode and decode every frame (test/support/mesh_fakes.js).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MeshError } from '../src/client/mesh_client.js';
import { BanList } from '../src/client/routing.js';
import { FrameFlags, FrameType } from '../src/protocol/wire.js';
import { CLIENT_CONFIG, FakeMesh, fakeClient, ones, referenceLogits, tokens } from './support/mesh_fakes.js';

const A = 'a'.repeat(64);
const B = 'b'.repeat(64);
const B2 = 'd'.repeat(64);
// The fake peers of these tests have no keys; web/test/answer_check.test.js checks signed answers.
const CONFIG = { ...CLIENT_CONFIG, verifyAnswers: false };

/** @param {FakeMesh} mesh */
const clientOn = (mesh) => fakeClient(mesh, { config: CONFIG });

/**
 * @param {{data: Float32Array}} logits
 * @param {number[]} expected
 */
function assertClose(logits, expected) {
  assert.equal(logits.data.length, expected.length);
  logits.data.forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-5, `logit ${i}: ${v} != ${expected[i]}`));
}

test('a generation runs through a chain of peers and gives the local reference', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  const client = clientOn(mesh);
  const steps = [tokens([5, 6, 7]), tokens([8]), tokens([9])];
  const expected = await referenceLogits(steps, [[0, 2], [2, 4]]);
  const session = await client.open(1, 16);
  assert.deepEqual(session.route, [[A, 0, 2], [B, 2, 4]]);
  for (const [i, ids] of steps.entries()) assertClose(await session.step(ids, ones(ids.length)), expected[i]);
  await session.close();
  const traffic = client.traffic.get(A);
  assert.equal(traffic?.hiddenFrames, 3);
  assert.equal(traffic?.tokenPositions, 5);
  await client.close();
});

test('a peer dying mid-generation is routed around and its inputs replayed to the replacement', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  mesh.add(B2, 2, 4);
  const client = clientOn(mesh);
  const steps = [tokens([5, 6, 7]), tokens([8]), tokens([9])];
  const expected = await referenceLogits(steps, [[0, 2], [2, 4]]);
  const session = await client.open(1, 16);
  const [, [second]] = session.route;
  const spare = second === B ? B2 : B;
  assertClose(await session.step(steps[0], ones(3)), expected[0]);
  mesh.kill(second);
  assertClose(await session.step(steps[1], ones(1)), expected[1]);
  assertClose(await session.step(steps[2], ones(1)), expected[2]);
  assert.deepEqual(session.route, [[A, 0, 2], [spare, 2, 4]]);
  assert.equal(session.failovers, 1);
  assert.equal(client.failures[0].peerId, second);
  assert.ok(client.bans.banned(second));
  // The replacement got the first step's hidden states again, flagged REPLAY, before the new step.
  const forwards = /** @type {any} */ (mesh.peers.get(spare)).seen.filter((/** @type {any} */ f) => f.type === FrameType.FORWARD);
  assert.equal(forwards[0].flags & FrameFlags.REPLAY, FrameFlags.REPLAY);
  assert.deepEqual(forwards[0].tensors[0].shape, [1, 3, 8]);
  assert.equal(forwards[1].flags & FrameFlags.REPLAY, 0);
  await session.close();
  await client.close();
});

test('no replacement left: the generation fails with MeshError naming the last failure', async () => {
  const mesh = new FakeMesh();
  mesh.add(A, 0, 2);
  mesh.add(B, 2, 4);
  const client = clientOn(mesh);
  const session = await client.open(1, 16);
  await session.step(tokens([1, 2]), ones(2));
  mesh.kill(B);
  await assert.rejects(session.step(tokens([3]), ones(1)), (err) => err instanceof MeshError && /peer bbbbbbbb/.test(err.message));
  await client.close();
});

test('every peer of a span refusing payment: each asked once, routed around, then the generation stops with MeshError', async () => {
  const mesh = new FakeMesh();
  const refusing = {
    codec: {}, // never reached: OPEN is refused before any ledger message (the client keeps no ledger: no hold)
    requireHold: () => {
      throw Object.assign(new Error('balance 0 does not cover 12 units'), { code: 'payment_required' });
    },
    acceptEntries: () => 0,
    serverReceipt: async () => ({ receipt: {}, serverSig: '' }),
    recordReceipt: () => null,
  };
  mesh.add(A, 0, 4, { ledger: /** @type {any} */ (refusing) });
  mesh.add(B, 0, 4, { ledger: /** @type {any} */ (refusing) });
  const client = clientOn(mesh);
  await assert.rejects(client.open(1, 16), (err) => err instanceof MeshError && /refused to serve: .*balance 0/.test(err.message));
  assert.deepEqual(client.failures.map((f) => f.peerId).sort(), [A, B].sort());
  await client.close();
});

test('an answer of the wrong shape is a hop failure: the peer is banned and replaced', async () => {
  const mesh = new FakeMesh();
  const bad = mesh.add(A, 0, 4);
  mesh.add(B, 0, 4);
  const client = clientOn(mesh);
  const original = bad.handle.bind(bad);
  bad.handle = async (peer, frame) => {
    const answer = await original(peer, frame);
    if (frame.type !== FrameType.FORWARD) return answer;
    const tensor = answer.tensors[0];
    return { ...answer, tensors: [{ ...tensor, shape: [1, 1, 16], data: new Float32Array(16) }] };
  };
  const expected = await referenceLogits([tokens([4, 5])], [[0, 4]]);
  // Route to the bad peer first: the other one is banned for the opening only.
  client.bans.ban(B);
  const session = await client.open(1, 8);
  assert.deepEqual(session.route, [[A, 0, 4]]);
  client.bans = new BanList(60);
  assertClose(await session.step(tokens([4, 5]), ones(2)), expected[0]);
  assert.deepEqual(session.route, [[B, 0, 4]]);
  assert.match(client.failures[0].error, /BadAnswerError|TensorError/);
  await client.close();
});

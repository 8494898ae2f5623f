// @ts-check
/**
 * The browser's mesh client checks every answer's signature (web/src/client/hop.js): peers with keys
 * (span servers signing with an Identity) serve it; a peer that does not sign, or signs something other
 * than what it returned, is a hop failure, routed around with the same result.
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Identity } from '../src/identity/identity.js';
import { FakeMesh, fakeClient, ones, referenceLogits, tokens } from './support/mesh_fakes.js';

/** @typedef {import('../src/client/mesh_client.js').MeshClient} MeshClient */

/**
 * @param {MeshClient} client
 * @returns {Promise<Float32Array[]>}
 */
async function run(client) {
  const session = await client.open(1, 16);
  const out = [];
  for (const ids of [tokens([5, 6, 7]), tokens([8]), tokens([9])]) out.push((await session.step(ids, ones(ids.length))).data);
  await session.close();
  return out;
}

async function signedPeer(/** @type {FakeMesh} */ mesh, /** @type {number} */ start, /** @type {number} */ end) {
  const identity = await Identity.generate();
  mesh.add(identity.peerId, start, end, { identity });
  return identity.peerId;
}

test('answers signed by their peers are taken, with the reference result', async () => {
  const mesh = new FakeMesh();
  await signedPeer(mesh, 0, 2);
  await signedPeer(mesh, 2, 4);
  const client = fakeClient(mesh);
  assert.equal(client.config.verifyAnswers, true, 'on by default');
  const got = await run(client);
  const expected = await referenceLogits([tokens([5, 6, 7]), tokens([8]), tokens([9])], [[0, 2], [2, 4]]);
  got.forEach((logits, i) => logits.forEach((v, k) => assert.ok(Math.abs(v - expected[i][k]) < 1e-5)));
  assert.deepEqual(client.failures, []);
});

test('an unsigned answer, or one signed over another output, is a hop failure routed around', async () => {
  for (const kind of ['unsigned', 'wrong_answer']) {
    const mesh = new FakeMesh();
    await signedPeer(mesh, 0, 2);
    const cheat = await Identity.generate();
    const server = mesh.add(cheat.peerId, 2, 4, kind === 'unsigned' ? {} : { identity: cheat });
    if (kind === 'wrong_answer') {
      const handle = server.handle.bind(server);
      server.handle = async (/** @type {string} */ client, /** @type {any} */ frame) => {
        const answer = await handle(client, frame);
        if (answer.tensors.length !== 1) return answer;
        const zeros = { ...answer.tensors[0], data: new Uint8Array(answer.tensors[0].data.byteLength) };
        return { ...answer, tensors: [zeros] };  // keeps the signature over the honest output
      };
    }
    await signedPeer(mesh, 2, 4);
    const client = fakeClient(mesh);
    const got = await run(client); // the cheat, announced first at the same cost, is routed first
    const expected = await referenceLogits([tokens([5, 6, 7]), tokens([8]), tokens([9])], [[0, 2], [2, 4]]);
    got.forEach((logits, i) => logits.forEach((v, k) => assert.ok(Math.abs(v - expected[i][k]) < 1e-5)));
    const failed = client.failures.filter((f) => f.peerId === cheat.peerId);
    assert.equal(failed.length, 1, JSON.stringify(client.failures));
    assert.match(failed[0].error, new RegExp(kind));
    assert.ok(client.failures.every((f) => f.peerId === cheat.peerId), JSON.stringify(client.failures));
  }
});

test('routing reads the ledger: excluded peers never, suspects only when no one else covers their blocks', async () => {
  const mesh = new FakeMesh();
  const low = await signedPeer(mesh, 0, 2);
  const excluded = await signedPeer(mesh, 2, 4);
  const suspect = await signedPeer(mesh, 2, 4);
  const honest = await signedPeer(mesh, 2, 4);
  /** @type {Record<string, string>} */
  const levels = { [excluded]: 'excluded', [suspect]: 'suspect' };
  const client = fakeClient(mesh);
  // Only what routing reads of a ledger (BrowserLedger.reputations): set after construction, so that no
  // ledger exchange is made for this test.
  client.ledger = /** @type {any} */ ({ reputations: async () => levels });
  assert.deepEqual((await client.route(0, 4, 8)).map((c) => c.peerId), [low, honest]);
  mesh.kill(honest);
  client.bans.ban(honest);
  assert.deepEqual((await client.route(0, 4, 8)).map((c) => c.peerId), [low, suspect], 'the suspect, as a last resort');
  levels[suspect] = 'excluded';
  // Both now excluded: only the banned peer is left, tried again (routing's last resort), never theirs.
  assert.deepEqual((await client.route(0, 4, 8)).map((c) => c.peerId), [low, honest]);
});

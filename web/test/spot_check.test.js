// @ts-check
/**
 * Spot checks of the browser's mesh client (web/src/client/spot_check.js), against fake span servers
 * that sign their answers with real Ed25519 keys: a peer that returns zeros or noise is caught in its
 * first session (a new peer is checked every session), by a replay to another peer of its span, settled
 * by a third; its evidence is valid by the Python core's rules (`python_peer/core/evidence.py`, run
 * here in a subprocess), its receipt is not countersigned, and routing avoids it from then on. An honest
 * peer whose outputs differ in their last bits (another runtime) is never accused. The policy's numbers
 * and rate function are Python's.
 */

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';

import { DEFAULT_POLICY, checkRate, relativeDiff, toleranceFor } from '../src/client/spot_check.js';
import { Identity, verify } from '../src/identity/identity.js';
import { FrameFlags, FrameType } from '../src/protocol/wire.js';
import { CLIENT_CONFIG, CLIENT_ID, FakeMesh, ROOT, fakeClient, fakeManifest, ones, referenceLogits, tokens } from './support/mesh_fakes.js';

/** @typedef {import('../src/client/mesh_client.js').MeshClient} MeshClient */

const STEPS = [[5, 6, 7], [8], [9]];

/** @param {string} code @param {string} [input] */
function python(code, input = '') {
  const script = `import sys, json\nsys.path.insert(0, ".")\n${code}`;
  return execFileSync(process.env.PYTHON ?? 'python3', ['-c', script], { input, cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] }).toString();
}

/**
 * A client on `mesh` whose ledger is only what spot checks and routing use of one: reputations (none)
 * and `appendEvidence`, which keeps what it is given; `settled` lists the peers whose receipts the
 * client went on to countersign (the exchange's `settle`, called only for paid hops).
 * @param {FakeMesh} mesh
 * @param {Partial<import('../src/client/spot_check.js').SpotCheckPolicy>} [spotChecks]
 */
function clientOn(mesh, spotChecks = {}) {
  const client = fakeClient(mesh, { manifest: { ...fakeManifest(), dtype: 'fp32' }, config: { ...CLIENT_CONFIG, spotChecks } });
  /** @type {any[]} */
  const evidence = [];
  /** @type {string[]} */
  const settled = [];
  // Set after construction, so that the client makes no ledger exchange (no holds, no pushes).
  client.ledger = /** @type {any} */ ({
    reputations: async () => ({}),
    appendEvidence: async (/** @type {any} */ body) => {
      evidence.push(body);
      return { seq: evidence.length };
    },
  });
  client.exchange.settle = async (_link, _meta, terms) => {
    settled.push(terms.server);
    return null;
  };
  return { client, evidence, settled };
}

/**
 * A span server with a real key; `lie` rewrites what its blocks return (the server signs the lie).
 * @param {FakeMesh} mesh
 * @param {number} start
 * @param {number} end
 * @param {((out: Float32Array, dims: number[]) => void) | null} [lie]
 */
async function peer(mesh, start, end, lie = null) {
  const identity = await Identity.generate();
  const server = mesh.add(identity.peerId, start, end, { identity });
  if (lie !== null) {
    const blocks = /** @type {any} */ (server.runners[0]);
    const forward = blocks.forward.bind(blocks);
    blocks.forward = async (/** @type {string} */ key, /** @type {any} */ hidden) => {
      const out = await forward(key, hidden);
      lie(out.data, out.dims);
      return out;
    };
  }
  return identity.peerId;
}

/** @param {MeshClient} client */
async function generate(client) {
  const session = await client.open(1, 16);
  /** @type {Float32Array[]} */
  const out = [];
  for (const ids of STEPS) out.push((await session.step(tokens(ids), ones(ids.length))).data);
  const route = session.route.map(([p]) => p);
  await session.close();
  return { out, route };
}

async function reference() {
  return referenceLogits(STEPS.map(tokens), [[0, 2], [2, 4]]);
}
const ref = await reference();

/** @param {Float32Array[]} got @param {number[][]} expected */
function assertClose(got, expected) {
  got.forEach((logits, i) => logits.forEach((v, k) => assert.ok(Math.abs(v - expected[i][k]) < 1e-5, `step ${i}: ${v} vs ${expected[i][k]}`)));
}

/** The FORWARD frames with the REPLAY flag a peer received. @param {FakeMesh} mesh @param {string} peerId */
function replays(mesh, peerId) {
  const seen = /** @type {any} */ (mesh.peers.get(peerId)).seen;
  return seen.filter((/** @type {any} */ f) => f.type === FrameType.FORWARD && f.flags & FrameFlags.REPLAY).length;
}

/**
 * Python's verdict on an evidence body written by `author` (`check_evidence` of python_peer/core, as
 * every node runs it): null when valid, else the rejection's [code, reason]. The answers' signatures are
 * checked here with WebCrypto and handed to Python as known claims, as the browser's ledger does.
 * @param {string} author
 * @param {any} body
 */
async function pythonCheck(author, body) {
  const claims = JSON.parse(
    python(
      [
        'from python_peer.core.evidence import Evidence',
        'ev = Evidence.from_dict(json.loads(sys.stdin.read()))',
        'print(json.dumps([[a.answer.server, a.answer.signing_bytes().decode(), a.signature] for a in [ev.liar, *ev.honest]]))',
      ].join('\n'),
      JSON.stringify(body),
    ),
  );
  const good = [];
  for (const [peerId, message, signature] of claims) {
    if (await verify(peerId, new TextEncoder().encode(message), signature).then(() => true, () => false)) good.push([peerId, message, signature]);
  }
  return JSON.parse(
    python(
      [
        'from python_peer.core.evidence import Evidence, check_evidence',
        'from python_peer.core.signature_claims import KnownSignatures',
        'args = json.loads(sys.stdin.read())',
        'known = KnownSignatures([(p, m.encode(), s) for p, m, s in args["good"]])',
        'r = check_evidence(args["author"], Evidence.from_dict(args["body"]), known)',
        'print(json.dumps(None if r is None else [r.code, r.reason]))',
      ].join('\n'),
      JSON.stringify({ author, body, good }),
    ),
  );
}

/** @type {Record<string, (out: Float32Array, dims: number[]) => void>} */
const LIES = {
  zeros: (out) => out.fill(0),
  noise: (out) => out.forEach((v, i) => (out[i] = v + (Math.random() - 0.5) * 4)),
  // honest on the prompt, zeros on decode steps (one new token)
  'zeros on decode steps only': (out, dims) => dims[1] === 1 && out.fill(0),
};

for (const [kind, lie] of Object.entries(LIES)) {
  test(`a peer returning ${kind} is caught in its first session, settled by a third, unpaid, and avoided`, async () => {
    const mesh = new FakeMesh();
    const first = await peer(mesh, 0, 2);
    const liar = await peer(mesh, 2, 4, lie); // announced first at the same cost: routed first
    const honest = [await peer(mesh, 2, 4), await peer(mesh, 2, 4)];
    const { client, evidence, settled } = clientOn(mesh);
    const { out, route } = await generate(client);
    assert.deepEqual(route, [first, liar], 'the liar served the first session');
    const lied = out.some((logits, i) => logits.some((v, k) => Math.abs(v - ref[i][k]) > 1e-3));
    assert.ok(lied, 'and its lie reached the reply');

    assert.deepEqual([...(client.spotChecks?.caught.keys() ?? [])], [liar]);
    assert.equal(client.spotChecks?.stats.caught, 1);
    // The check went to the other peers of the span (the checker replays all steps, the settler up to
    // the first disagreement), never to the liar again.
    assert.equal(replays(mesh, liar), 0);
    assert.ok(honest.every((p) => replays(mesh, p) >= 1), 'both honest peers were asked: checker and settler');
    // Evidence: the liar's signed answer and the two honest ones, valid by every node's rules.
    assert.equal(evidence.length, 1);
    assert.equal(evidence[0].liar.body.server, liar);
    assert.deepEqual(new Set(evidence[0].honest.map((/** @type {any} */ h) => h.body.server)), new Set(honest));
    assert.equal(await pythonCheck(CLIENT_ID, evidence[0]), null);
    // Paid: the first hop and the two honest replays; never the liar.
    assert.ok(!settled.includes(liar), JSON.stringify(settled));
    assert.ok(settled.includes(first) && honest.every((p) => settled.includes(p)), JSON.stringify(settled));
    assert.ok(client.bans.banned(liar));

    // From then on the liar is never routed, even after its ban expires, and the replies are right.
    client.bans = new (/** @type {any} */ (client.bans).constructor)(60);
    const again = await generate(client);
    assert.ok(!again.route.includes(liar), JSON.stringify(again.route));
    assertClose(again.out, await reference());
  });
}

test('the evidence is refused by the Python rules when tampered with: a forged honest answer, a changed output', async () => {
  const mesh = new FakeMesh();
  await peer(mesh, 0, 2);
  await peer(mesh, 2, 4, LIES.zeros);
  await peer(mesh, 2, 4);
  await peer(mesh, 2, 4);
  const { client, evidence } = clientOn(mesh);
  await generate(client);
  assert.equal(evidence.length, 1);
  const forged = structuredClone(evidence[0]);
  forged.honest[0].body.output = forged.liar.body.output.replace(/^./, (c) => (c === '0' ? '1' : '0'));
  assert.equal((await pythonCheck(CLIENT_ID, forged))?.[0], 'bad_signature');
  const other = await pythonCheck('d'.repeat(64), evidence[0]);
  assert.equal(other?.[0], 'bad_evidence', 'evidence only in the log of the client the answers were given to');
});

test('an honest peer whose outputs differ in their last bits (another runtime) is never accused', async () => {
  const mesh = new FakeMesh();
  await peer(mesh, 0, 2);
  // relative error ~1e-4, far below fp32's tolerance (1e-2), like WASM vs native (~2e-3)
  const wobbly = await peer(mesh, 2, 4, (out) => out.forEach((v, i) => (out[i] = v * (1 + 1e-4 * Math.sin(i)))));
  await peer(mesh, 2, 4);
  await peer(mesh, 2, 4);
  const { client, evidence, settled } = clientOn(mesh);
  for (let i = 0; i < 6; i++) {
    const { out, route } = await generate(client);
    assert.equal(route[1], wobbly);
    out.forEach((logits, s) => logits.forEach((v, k) => assert.ok(Math.abs(v - /** @type {number[][]} */ (ref)[s][k]) < 1e-2)));
  }
  const stats = /** @type {NonNullable<MeshClient['spotChecks']>} */ (client.spotChecks).stats;
  assert.equal(stats.caught, 0);
  assert.equal(evidence.length, 0);
  assert.ok(stats.passed >= 5, `new peers are checked every session: ${JSON.stringify(stats)}`);
  assert.ok(stats.largestAgreeingDiff > 0 && stats.largestAgreeingDiff < 1e-3, String(stats.largestAgreeingDiff));
  assert.ok(settled.filter((p) => p === wobbly).length === 6, 'paid for every session');
});
test('with no third peer, a disagreement stays inconclusive: no one is accused, both are paid', async () => {
  const mesh = new FakeMesh();
  await peer(mesh, 0, 2);
  const liar = await peer(mesh, 2, 4, LIES.zeros);
  const honest = await peer(mesh, 2, 4);
  const { client, evidence, settled } = clientOn(mesh);
  await generate(client);
  const stats = /** @type {NonNullable<MeshClient['spotChecks']>} */ (client.spotChecks).stats;
  assert.equal(stats.inconclusive, 1);
  assert.equal(stats.caught, 0);
  assert.equal(evidence.length, 0);
  assert.ok(settled.includes(liar) && settled.includes(honest));
});

test('a lying checker is the one caught: the checked honest peer is paid', async () => {
  const mesh = new FakeMesh();
  await peer(mesh, 0, 2);
  const checked = await peer(mesh, 2, 4); // routed first
  const liar = await peer(mesh, 2, 4, LIES.zeros);
  const settler = await peer(mesh, 2, 4);
  const others = [liar, settler].sort();
  // every draw: check (any value below 1), and the first choice among the sorted others is the liar
  const pick = (others.indexOf(liar) + 0.5) / 2;
  const { client, evidence, settled } = clientOn(mesh, { random: () => pick });
  const { out } = await generate(client);
  assertClose(out, ref);
  assert.deepEqual([...(client.spotChecks?.caught.keys() ?? [])], [liar]);
  assert.equal(evidence[0].liar.body.server, liar);
  assert.equal(await pythonCheck(CLIENT_ID, evidence[0]), null);
  assert.ok(settled.includes(checked) && settled.includes(settler) && !settled.includes(liar), JSON.stringify(settled));
});

test('spot checks off (spotChecks: null), or unverified answers: no replay is made', async () => {
  for (const config of [{ spotChecks: null }, { verifyAnswers: false }]) {
    const mesh = new FakeMesh();
    await peer(mesh, 0, 2);
    const liar = await peer(mesh, 2, 4, LIES.zeros);
    const honest = await peer(mesh, 2, 4);
    const { client } = clientOn(mesh);
    Object.assign(client.config, config);
    if (config.spotChecks === null) client.spotChecks = null;
    await generate(client);
    assert.equal(replays(mesh, honest), 0);
    assert.equal(replays(mesh, liar), 0);
  }
});

test("the policy's numbers and rate function are Python's (python_peer/spot_check.py)", () => {
  const py = JSON.parse(
    python(
      [
        'from python_peer.spot_check import DEFAULT_POLICY, TOLERANCES, relative_diff',
        'import numpy as np',
        'a = np.array([[[1.0, -2.0, 3.0]]], dtype=np.float32); b = np.array([[[1.001, -2.0, 2.9]]], dtype=np.float32)',
        'print(json.dumps({"floor": DEFAULT_POLICY.floor, "warmup": DEFAULT_POLICY.warmup, "tolerances": TOLERANCES,',
        '  "rates": [DEFAULT_POLICY.rate(p) for p in range(60)], "q4": DEFAULT_POLICY.tolerance("int3"),',
        '  "diff": relative_diff(a, b)}))',
      ].join('\n'),
    ),
  );
  assert.equal(DEFAULT_POLICY.floor, py.floor);
  assert.equal(DEFAULT_POLICY.warmup, py.warmup);
  assert.deepEqual({ ...DEFAULT_POLICY.tolerances }, py.tolerances);
  assert.equal(toleranceFor('int3'), py.q4, 'an unknown dtype gets the loosest tolerance');
  for (const [passes, rate] of py.rates.entries()) assert.ok(Math.abs(checkRate(passes) - rate) < 1e-12, `passes ${passes}: ${checkRate(passes)} vs ${rate}`);
  const a = { data: Float32Array.from([1, -2, 3]), dims: [1, 1, 3] };
  const b = { data: Float32Array.from([1.001, -2, 2.9]), dims: [1, 1, 3] };
  assert.ok(Math.abs(relativeDiff(a, b) - py.diff) < 1e-7);
  assert.equal(relativeDiff(a, { data: new Float32Array(6), dims: [1, 2, 3] }), Infinity);
  // The policy's shape (docs/trust.md): every session until 5 passes, a quarter after 9, the floor from 22.
  assert.equal(checkRate(4), 1);
  assert.equal(checkRate(9), 0.25);
  assert.equal(checkRate(22), 0.05);
  assert.equal(checkRate(1000), 0.05);
});

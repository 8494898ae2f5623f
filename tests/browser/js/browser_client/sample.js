// @ts-check

/**
 * `sample` of web/src/client/generate.js on one row of logits: greedy, near-greedy, the frequencies of
 * `draws` seeded draws (Python compares them with its own distribution), seeds, and refused parameters.
 * @param {{ logits: number[], draws: number }} args
 */
async ({ logits, draws }) => {
  const G = await import('/web/src/client/generate.js');
  const caught = (f) => { try { f(); return 'no error'; } catch (e) { return `${e.name}: ${e.message}`; } };
  const counts = (params) => {
    const rng = G.makeRng(params.seed);
    const seen = new Array(logits.length).fill(0);
    for (let i = 0; i < draws; i++) seen[G.sample(logits, params, rng)]++;
    return seen;
  };
  const seeded = (seed) => { const rng = G.makeRng(seed); return Array.from({ length: 20 }, () => G.sample(logits, G.samplingParams({ temperature: 1, seed }), rng)); };
  return {
    greedy: G.sample(logits, G.samplingParams({ temperature: 0 }), G.makeRng(1)),
    tiny: G.sample(logits, G.samplingParams({ temperature: 1e-7 }), G.makeRng(1)),
    full: counts(G.samplingParams({ temperature: 0.8, seed: 11 })),
    nucleus: counts(G.samplingParams({ temperature: 1.3, topP: 0.6, seed: 12 })),
    sameSeed: JSON.stringify(seeded(5)) === JSON.stringify(seeded(5)),
    otherSeed: JSON.stringify(seeded(5)) !== JSON.stringify(seeded(6)),
    refusals: [
      caught(() => G.samplingParams({ maxTokens: 0 })),
      caught(() => G.samplingParams({ temperature: 11 })),
      caught(() => G.samplingParams({ topP: 0 })),
      caught(() => G.samplingParams({ seed: -1 })),
      caught(() => G.samplingParams({ stop: [''] })),
    ],
  };
};

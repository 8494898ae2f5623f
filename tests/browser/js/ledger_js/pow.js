// @ts-check

/**
 * The proof-of-work bits of each (author, nonce), and a slice of grant mining for each (author, bits, start).
 * @param {{ cases: [string, number][], mines: [string, number, number][] }} args
 */
async ({ cases, mines }) => ({
  bits: cases.map(([author, nonce]) => LJ.powBits(author, nonce)),
  mined: mines.map(([author, bits, start]) => LJ.mineGrantSlice(author, bits, start, 1 << 20)),
});

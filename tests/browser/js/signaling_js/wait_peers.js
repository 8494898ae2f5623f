// @ts-check

/**
 * The first signal that reaches client `a` (within 5 s).
 */
async () => {
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('no signal')), 5000));
  return await Promise.race([clients.a.recvSignal(), timeout]);
};

// @ts-check

/**
 * Call `method` of the ledger opened as `name`; its result, or the error's name and message.
 * @param {{ name: string, method: string, args: unknown[] }} args
 */
async ({ name, method, args }) => {
  try {
    return { ok: await ledgers[name][method](...args) };
  } catch (e) {
    return { error: { name: e.name, code: e.code ?? null, message: e.message } };
  }
};

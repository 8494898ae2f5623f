// @ts-check
/**
 * Pyodide for the ledger: loaded once per page and `python_core` URL, with the files of
 * `python_peer/core` the browser imports (`CORE_FILES`) fetched from that URL and written into its file
 * system. `loadCore` gives `python_peer.core.browser_ledger` (the ledger's rules and store),
 * `loadCoreModule` any other module of the core (`ledger_exchange`).
 */

import { LedgerError } from './errors.js';

/** The files of `python_peer/core` the browser imports, fetched from the page config's `python_core`. */
export const CORE_FILES = Object.freeze([
  '__init__.py',
  'errors.py',
  'canonical.py',
  'economics.py',
  'protocol.py',
  'ledger_fields.py',
  'receipts.py',
  'holds.py',
  'answers.py',
  'evidence.py',
  'entries.py',
  'proof_of_work.py',
  'rules.py',
  'counting.py',
  'rarity.py',
  'balances.py',
  'running.py',
  'sweep_journal.py',
  'reputation.py',
  'signature_claims.py',
  'chain_store.py',
  'gossip.py',
  'memory_store.py',
  'browser_persistence.py',
  'browser_signing.py',
  'browser_ledger.py',
  'wire.py', // ledger_exchange.py sizes gossip answers by wire.MAX_METADATA_BYTES
  'ledger_exchange.py',
]);
const PY_ROOT = '/home/pyodide/ai4all';

/** @type {Map<string, Promise<any>>} python_core URL -> the Pyodide instance with those files imported */
const runtimes = new Map();

/**
 * Load Pyodide (once per page and `coreUrl`) and import `python_peer.core.browser_ledger` from `coreUrl`.
 * @param {string | URL} coreUrl
 * @returns {Promise<any>} the Python module `browser_ledger`
 */
export function loadCore(coreUrl) {
  return loadCoreModule(coreUrl, 'browser_ledger');
}

/**
 * The Python module `python_peer.core.<name>` (one of `CORE_FILES`), Pyodide loaded once per page and `coreUrl`.
 * @param {string | URL} coreUrl
 * @param {string} name
 * @returns {Promise<any>}
 */
export async function loadCoreModule(coreUrl, name) {
  const pyodide = await loadPyodideCore(coreUrl);
  return pyodide.pyimport(`python_peer.core.${name}`);
}

/**
 * Pyodide with the core's files written and importable, once per page and `coreUrl`.
 * @param {string | URL} coreUrl
 * @returns {Promise<any>}
 */
function loadPyodideCore(coreUrl) {
  const base = new URL(String(coreUrl), globalThis.location?.href);
  if (!base.pathname.endsWith('/')) base.pathname += '/';
  const key = base.href;
  let runtime = runtimes.get(key);
  if (runtime === undefined) {
    runtime = startCore(base);
    runtimes.set(key, runtime);
    runtime.catch(() => runtimes.delete(key));
  }
  return runtime;
}

/** @param {URL} base */
async function startCore(base) {
  const indexURL = new URL('../../node_modules/pyodide/', import.meta.url).href;
  /** @type {any} */
  let pyodide;
  const files = Promise.all(
    CORE_FILES.map(async (name) => {
      const url = new URL(name, base);
      let response;
      try {
        response = await fetch(url);
      } catch (error) {
        throw new LedgerError(`cannot fetch the ledger rules ${url}: ${error}`, { code: 'store', cause: error });
      }
      if (!response.ok) throw new LedgerError(`cannot fetch the ledger rules ${url}: HTTP ${response.status}`, { code: 'store' });
      return [name, await response.text()];
    }),
  );
  try {
    const { loadPyodide } = await import(new URL('pyodide.mjs', indexURL).href);
    pyodide = await loadPyodide({ indexURL });
  } catch (error) {
    throw new LedgerError(`cannot start Pyodide from ${indexURL}: ${error}`, { code: 'store', cause: error });
  }
  const dir = `${PY_ROOT}/python_peer/core`;
  pyodide.FS.mkdirTree(dir);
  pyodide.FS.writeFile(`${PY_ROOT}/python_peer/__init__.py`, '');
  for (const [name, text] of await files) pyodide.FS.writeFile(`${dir}/${name}`, text);
  pyodide.runPython(`import sys\nif ${JSON.stringify(PY_ROOT)} not in sys.path: sys.path.insert(0, ${JSON.stringify(PY_ROOT)})`);
  pyodide.pyimport('python_peer.core.browser_ledger'); // import errors show at load, not at first use
  return pyodide;
}

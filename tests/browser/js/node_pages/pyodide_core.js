// @ts-check

/**
 * Pyodide loads under the page's CSP and imports the core from the node: a sum and the PoW bits.
 */
async () => {
  const config = JSON.parse(document.getElementById('ai4all-config').textContent);
  const { loadPyodide } = await import('/web/node_modules/pyodide/pyodide.mjs');
  const pyodide = await loadPyodide({ indexURL: '/web/node_modules/pyodide/' });
  const sum = pyodide.runPython('1+1');
  pyodide.FS.mkdirTree('/home/pyodide/python_peer/core');
  pyodide.FS.writeFile('/home/pyodide/python_peer/__init__.py', '');
  for (const name of ['__init__.py', 'errors.py', 'economics.py']) {
    const response = await fetch(new URL(name, config.python_core));
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
    pyodide.FS.writeFile(`/home/pyodide/python_peer/core/${name}`, await response.text());
  }
  const bits = pyodide.runPython(
    'import sys; sys.path.insert(0, "/home/pyodide")\n' +
    'from python_peer.core.economics import Rules\n' +
    `Rules(grant_pow_bits=${config.ledger.pow_bits}).grant_pow_bits`);
  return { sum, bits, expected: config.ledger.pow_bits, version: pyodide.version };
};

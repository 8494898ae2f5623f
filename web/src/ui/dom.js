// @ts-check
/**
 * Small DOM helpers shared by the browser node's pages (contribute, chat).
 */

/**
 * An element with attributes and children: `class` sets the class name, `true` an empty attribute,
 * `false` and `undefined` leave the attribute out.
 * @param {string} tag
 * @param {{[key: string]: string | boolean | undefined}} [attrs]
 * @param {(Node | string)[]} children
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (name === 'class') node.className = String(value);
    else node.setAttribute(name, value === true ? '' : value);
  }
  node.append(...children);
  return node;
}

/** @param {unknown} err */
export const message = (err) => (err instanceof Error ? err.message : String(err));

/**
 * Ledger units (1 credit = 1000 units) as credits with three decimals, exactly; '—' when unknown.
 * @param {number | null} units
 */
export function credits(units) {
  if (units === null || !Number.isFinite(units)) return '—';
  const sign = units < 0 ? '-' : '';
  const abs = Math.abs(Math.trunc(units));
  return `${sign}${Math.floor(abs / 1000).toLocaleString('en')}.${String(abs % 1000).padStart(3, '0')}`;
}

/**
 * Add a page's stylesheet and read what the signaling node rendered into it: the `#app` element and
 * the configuration of `<script type="application/json" id="ai4all-config">` (docs/browser.md).
 * @param {string | URL} stylesheet
 * @returns {{root: HTMLElement, config: any}}
 */
export function mountPage(stylesheet) {
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = String(stylesheet);
  document.head.append(link);
  const root = document.getElementById('app');
  const script = document.getElementById('ai4all-config');
  if (root === null || script === null) throw new Error('the page has no #app or #ai4all-config element');
  return { root, config: JSON.parse(script.textContent ?? '{}') };
}

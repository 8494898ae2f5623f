// @ts-check

/**
 * A node page's shell: isolation, its configuration, its module, its app element, its style sheet.
 */
() => ({
  isolated: globalThis.crossOriginIsolated,
  config: JSON.parse(document.getElementById('ai4all-config').textContent),
  module: document.querySelector('script[type=module]').getAttribute('src'),
  app: !!document.querySelector('main#app'),
  styled: [...document.styleSheets].some((s) => (s.href || '').endsWith('/web/src/ui/node.css')
    && s.cssRules.length > 0),
});

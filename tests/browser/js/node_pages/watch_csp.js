// @ts-check
// Init script: collect CSP violations from the start of every document, before any page script runs.

window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (event) => {
  window.__cspViolations.push(`${event.effectiveDirective} blocked ${event.blockedURI || 'inline'}`);
});

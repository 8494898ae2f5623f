"""Browser tests: Debian's Chromium driven by pytest-playwright (marker ``browser``).

``conftest.py`` holds the fixtures (launch settings from ``playwright.config.py``, the static server for
``web/`` and ``tests/vectors/``, a blank harness page, the tiny model and the core mounted on it); helpers
that are not fixtures live in ``tests/support/`` (``static_server.py``, ``browser.py``, ``browser_node.py``,
``browser_client.py``, ``node_page.py``). ``js/<test module>/<name>.js`` holds the page scripts: each file is
one function (``// @ts-check``, JSDoc types) that a test runs with ``page.evaluate(script(name), arg)``;
``js/globals.d.ts`` declares what setup scripts install on a page, and ``js/tsconfig.json`` checks them
(``tsc -p tests/browser/js``). ``test_wire_vectors.py`` runs the JS wire codec against the Python one.
"""

"""Browser tests: Debian's Chromium driven by pytest-playwright (marker ``browser``).

``conftest.py`` holds the fixtures (launch settings from ``playwright.config.py``, a static server for
``web/`` and ``tests/vectors/``, a blank harness page); ``test_wire_vectors.py`` runs the JS wire codec
against the Python one.
"""

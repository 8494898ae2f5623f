"""OpenAI's error shape, as a test checks it: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

import httpx

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """``response`` is an error of ``status`` in OpenAI's shape; returns the inner error object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if code is not None:
        assert error["code"] == code, error
    return dict(error)

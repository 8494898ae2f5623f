"""The check a command makes before it uses a model directory: signed by a publisher it trusts, or an
unsigned local export it was told to use (``core/publisher_trust.py`` holds the rule; this adds pynacl's
signature check and says which it was on stderr)."""

from __future__ import annotations

import logging
from pathlib import Path

from python_peer.core.publisher_trust import TrustPolicy, TrustVerdict, check_model_dir
from python_peer.identity import verify

log = logging.getLogger(__name__)


def check_trusted_model(model_dir: str | Path, policy: TrustPolicy) -> TrustVerdict:
    """Refuse ``model_dir`` unless ``policy`` (``--trust-publisher``, ``--allow-unsigned``) admits it."""
    verdict = check_model_dir(model_dir, policy, verify)
    log.info("%s", verdict.describe())
    return verdict

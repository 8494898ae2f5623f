"""``ai4all publish DIR``: sign an exported model's manifest and every file it names, as its publisher.

The publisher is the identity kept in ``--data-dir`` (created on first use, as for a peer); its id
alone goes to stdout, for the ``--trust-publisher ID`` of the nodes that will use the model. Only a
model that admission lets in is signed (``core/admission.py``), and the signed manifest
(``manifest.sig.json``, ``core/publication.py``) is written atomically beside ``manifest.json``, with
its registry record (``manifest.record.json``, ``core/registry_record.py``): the few hundred signed
bytes signaling nodes gossip.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import CommandError

if TYPE_CHECKING:
    from python_peer.core.publication import Publication
    from python_peer.identity import Identity

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "publish",
        help="sign a model's manifest as its publisher",
        description=(
            "Sign DIR's manifest.json and the size and chunk hashes of every file it names with the identity "
            "in --data-dir (created if absent), into DIR/manifest.sig.json, and its registry record (what "
            "signaling nodes gossip) into DIR/manifest.record.json. Prints the publisher's id alone "
            "on stdout: nodes use the model with --trust-publisher ID."
        ),
    )
    parser.add_argument(
        "model_dir", type=Path, metavar="DIR", help="an exported model (ai4all export --out DIR)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the publisher's identity is kept (default: $AI4ALL_DATA_DIR or ~/.local/share/ai4all)",
    )
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="version of this publication (default: now in ms); a node prefers a model's highest version",
    )
    parser.set_defaults(handler=run)


def publish_dir(model_dir: Path, identity: Identity, *, version: int | None = None) -> Publication:
    """Admit ``model_dir``, sign its manifest and files as ``identity`` and write ``manifest.sig.json``."""
    from python_peer.core.admission import admit_model_dir
    from python_peer.core.publication import SIGNED_MANIFEST_FILE, publish
    from python_peer.core.registry_record import RECORD_FILE, RegistryRecord

    manifest = admit_model_dir(model_dir)  # never sign what no node would admit
    now = int(time.time() * 1000)
    publication = publish(
        model_dir,
        manifest,
        identity.peer_id,
        identity.sign,
        version=now if version is None else version,
        issued_ms=now,
    )
    _write_atomically(model_dir / SIGNED_MANIFEST_FILE, json.dumps(publication.to_dict(), indent=1) + "\n")
    # the small signed record signaling nodes gossip as the registry (core/registry_record.py)
    record = RegistryRecord.sign_publication(publication, identity.sign)
    _write_atomically(model_dir / RECORD_FILE, json.dumps(record.to_dict(), indent=1) + "\n")
    return publication


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".manifest-sig-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def run(args: argparse.Namespace) -> int:
    from python_peer.identity import Identity, default_data_dir

    if args.version is not None and not 0 <= args.version <= 2**53 - 1:
        raise CommandError(f"--version {args.version} must be an integer in [0, 2**53 - 1]")
    if not (args.model_dir / "manifest.json").is_file():
        raise CommandError(
            f"{args.model_dir} holds no manifest.json: export a model there first (ai4all export)"
        )
    identity = Identity.load_or_create(args.data_dir or default_data_dir())
    publication = publish_dir(args.model_dir, identity, version=args.version)
    chunks = sum(len(f.chunks) for f in publication.files)
    print(
        f"signed {publication.model} version {publication.version}: {len(publication.files)} files, "
        f"{chunks} chunk hashes",
        file=sys.stderr,
    )
    print(identity.peer_id)
    return 0

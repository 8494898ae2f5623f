"""Which publishers a node trusts, and the check of a model directory against that choice.

A node uses a model directory only if its signed manifest (``publication.py``) verifies, pins the
``manifest.json`` beside it and every file it names, and is signed by a publisher the node trusts:
one of ``DEFAULT_TRUSTED_PUBLISHERS`` or one its operator names with ``--trust-publisher ID``. A
directory without a signed manifest (a local export) is used only with ``--allow-unsigned``. A forged,
altered or re-signed manifest is refused whatever the flags; an untrusted publisher is named, with the
flag that would trust it. A registry record beside it (``manifest.record.json``, ``registry_record.py``)
must be its publisher's record of this very publication. The flags are defined once, here, for ``peer``, ``chat`` and ``signal``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .canonical import is_peer_id
from .errors import CommandError, PublicationError, UntrustedPublisherError
from .manifest import MANIFEST_FILE, Manifest, load_manifest
from .publication import SIGNED_MANIFEST_FILE, Publication, Verify, _read, named_files, read_publication
from .registry_record import RECORD_FILE, RegistryRecord, read_record

# ``--allow-unsigned`` defaults to on when this variable is "1" (a private test network of local exports).
ALLOW_UNSIGNED_ENV = "AI4ALL_ALLOW_UNSIGNED"
# Publishers every node trusts without being told. The project publishes no key of its own yet, so the
# list is empty: a node trusts exactly the publishers its operator names.
DEFAULT_TRUSTED_PUBLISHERS: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustPolicy:
    """The publishers a node trusts (beyond the defaults), and whether unsigned local exports are used."""

    publishers: frozenset[str] = frozenset()
    allow_unsigned: bool = False

    def __post_init__(self) -> None:
        for publisher in self.publishers:
            if not is_peer_id(publisher):
                raise CommandError(
                    f"--trust-publisher {publisher!r:.80} is not a publisher id (64 lowercase hex digits, "
                    "as ai4all publish prints)"
                )

    def trusts(self, publisher: str) -> bool:
        return publisher in self.publishers or publisher in DEFAULT_TRUSTED_PUBLISHERS


@dataclass(frozen=True)
class TrustVerdict:
    """A model directory a node may use: its manifest, and its publication (None for an unsigned export)."""

    manifest: Manifest
    publication: Publication | None
    record: RegistryRecord | None = None  # its registry record (``manifest.record.json``), when present

    def describe(self) -> str:
        if self.publication is None:
            return f"model {self.manifest.name}: an unsigned local export (--allow-unsigned)"
        return (
            f"model {self.manifest.name}: signed by trusted publisher {self.publication.publisher} "
            f"(version {self.publication.version})"
        )


def add_trust_args(parser: argparse.ArgumentParser) -> None:
    """``--trust-publisher ID`` (repeatable) and ``--allow-unsigned``, for every command that loads a model."""
    parser.add_argument(
        "--trust-publisher",
        action="append",
        default=[],
        metavar="ID",
        help="use models whose manifest this publisher signed (ai4all publish prints its id); repeatable",
    )
    parser.add_argument(
        "--allow-unsigned",
        action="store_true",
        default=os.environ.get(ALLOW_UNSIGNED_ENV) == "1",
        help=(
            "also use a model directory that has no signed manifest: a local export of your own "
            f"(default: off, on when ${ALLOW_UNSIGNED_ENV} is 1)"
        ),
    )


def trust_policy(args: argparse.Namespace) -> TrustPolicy:
    """The checked trust flags; a malformed id raises ``CommandError`` naming the flag."""
    return TrustPolicy(frozenset(args.trust_publisher or ()), bool(args.allow_unsigned))


def check_model_dir(model_dir: str | Path, policy: TrustPolicy, verify: Verify) -> TrustVerdict:
    """Refuse a model directory this node must not use; return its manifest and publication otherwise."""
    root = Path(model_dir)
    manifest = load_manifest(root)
    publication = read_publication(root)
    if publication is None:
        if policy.allow_unsigned:
            return TrustVerdict(manifest, None)
        raise PublicationError(
            f"{root} has no signed manifest ({SIGNED_MANIFEST_FILE}): sign it with `ai4all publish {root}` "
            "and trust that publisher (--trust-publisher ID), or pass --allow-unsigned to use a local export"
        )
    publication.verify(verify)
    try:
        manifest_text = _read(root / MANIFEST_FILE)
    except FileNotFoundError:
        raise PublicationError(f"{root / MANIFEST_FILE} is missing") from None
    publication.check_manifest(manifest_text, manifest)
    _check_unhashed_files(root, manifest, publication)
    if not policy.trusts(publication.publisher):
        raise UntrustedPublisherError(
            f"{root} is signed by publisher {publication.publisher}, which this node does not trust: "
            f"pass --trust-publisher {publication.publisher} to use it",
            publication.publisher,
        )
    record = read_record(root)
    if record is not None:  # what this node registers with signaling nodes must be this publication's
        record.verify(verify)
        try:
            record.check_publication(publication)
        except PublicationError as exc:
            raise PublicationError(f"{root / RECORD_FILE}: {exc}") from exc
    return TrustVerdict(manifest, publication, record)


def _check_unhashed_files(root: Path, manifest: Manifest, publication: Publication) -> None:
    """The files the manifest names without a hash (tokenizer, chat template) match the publication."""
    for name, known in named_files(manifest).items():
        if known is not None:
            continue  # a shard file: the runner checks its sha256 before loading it
        listed = publication.file(name)
        try:
            data = (root / name).read_bytes()
        except OSError as exc:
            raise PublicationError(f"cannot read {root / name}: {exc.strerror or exc}") from exc
        if len(data) != listed.bytes or hashlib.sha256(data).hexdigest() != listed.sha256:
            raise PublicationError(
                f"{root / name} is not the file publisher {publication.publisher[:12]}… signed"
            )

"""A node's persistent Ed25519 identity: its peer id is the hex of the public key.

The secret seed lives in ``<data dir>/identity.key`` (hex, mode 0600), written atomically so a crash
never leaves half a key, and published with a hard link so two processes starting at once agree on one
key. pynacl errors are translated here, at the boundary, into ``IdentityError`` and ``SignatureError``.
Verification only needs the peer id, so ``verify`` is a plain function (the stdlib-only core takes it
as a parameter; the browser passes WebCrypto's instead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from python_peer.core.canonical import is_peer_id, is_signature, signing_bytes
from python_peer.core.errors import CanonicalError, IdentityError, SignatureError

__all__ = ["IDENTITY_FILE", "Identity", "verify", "verify_body"]

IDENTITY_FILE = "identity.key"


def default_data_dir() -> Path:
    """Where a node keeps its identity and ledger by default: ``$AI4ALL_DATA_DIR``, else
    ``$XDG_DATA_HOME/ai4all``, else ``~/.local/share/ai4all``."""
    explicit = os.environ.get("AI4ALL_DATA_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME", "~/.local/share")).expanduser() / "ai4all"


_SEED_BYTES = 32

log = logging.getLogger(__name__)


class Identity:
    """An Ed25519 key pair; ``peer_id`` (64 hex digits) is how every other node names this one."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._key = signing_key
        self.peer_id: str = signing_key.verify_key.encode().hex()

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id[:12]}…)"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh random identity, kept only in memory."""
        return cls(SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """The identity of a 32-byte secret seed (as stored in ``identity.key``)."""
        if len(seed) != _SEED_BYTES:
            raise IdentityError(f"an Ed25519 seed is {_SEED_BYTES} bytes, not {len(seed)}")
        try:
            return cls(SigningKey(seed))
        except (CryptoError, TypeError, ValueError) as exc:
            raise IdentityError(f"seed is not a usable Ed25519 key: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> Identity:
        """Read a key file; a missing, unreadable or corrupt file is an ``IdentityError``."""
        try:
            return cls._read(Path(path))
        except FileNotFoundError as exc:
            raise IdentityError(f"no identity key at {path}") from exc

    @classmethod
    def _read(cls, path: Path) -> Identity:
        try:
            text = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            raise
        except (OSError, UnicodeDecodeError) as exc:
            raise IdentityError(f"cannot read identity key {path}: {exc}") from exc
        try:
            seed = bytes.fromhex(text)
        except ValueError as exc:
            raise IdentityError(f"identity key {path} is not hex: delete it to make a new identity") from exc
        if len(seed) != _SEED_BYTES:
            raise IdentityError(
                f"identity key {path} holds {len(seed)} bytes, not {_SEED_BYTES}: it is corrupt"
            )
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("identity key %s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
        return cls.from_seed(seed)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> Identity:
        """The identity stored in ``data_dir``, created on first use; the same one on every later call."""
        path = Path(data_dir) / IDENTITY_FILE
        try:
            return cls._read(path)
        except FileNotFoundError:
            pass
        fresh = cls.generate()
        try:
            fresh._write(path, replace=False)
        except FileExistsError:
            # Another process created it between our read and our write: theirs wins.
            return cls._read(path)
        log.info("created identity %s in %s", fresh.peer_id, path)
        return fresh

    def save(self, path: Path) -> None:
        """Write the key to ``path`` (mode 0600), replacing any file there, atomically."""
        self._write(Path(path), replace=True)

    def _write(self, path: Path, *, replace: bool) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=".identity-", suffix=".tmp", dir=path.parent)
        except OSError as exc:
            raise IdentityError(f"cannot write identity key in {path.parent}: {exc}") from exc
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as handle:  # mkstemp made it 0600
                handle.write(self._key.encode().hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            if replace:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # fails with FileExistsError instead of overwriting
            _fsync_dir(path.parent)
        except FileExistsError:
            raise
        except OSError as exc:
            raise IdentityError(f"cannot write identity key {path}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def sign(self, message: bytes) -> str:
        """Sign raw bytes; the signature is 128 hex digits."""
        return self._key.sign(message).signature.hex()

    def sign_body(self, context: str, body: Any) -> str:
        """Sign the canonical JSON of ``body`` under ``context`` (see ``core.canonical.signing_bytes``)."""
        return self.sign(signing_bytes(context, body))


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable; some filesystems cannot open directories, which is fine to skip."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify(peer_id: str, message: bytes, signature: str) -> None:
    """Check that ``signature`` (hex) over ``message`` was made by ``peer_id``; raise ``SignatureError``."""
    if not is_peer_id(peer_id):
        raise SignatureError(f"{peer_id!r:.80} is not a peer id (64 lowercase hex digits)")
    if not is_signature(signature):
        raise SignatureError("a signature is 128 lowercase hex digits")
    try:
        VerifyKey(bytes.fromhex(peer_id)).verify(message, bytes.fromhex(signature))
    except BadSignatureError as exc:
        raise SignatureError(f"signature does not match the signed bytes for peer {peer_id[:12]}…") from exc
    except (CryptoError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot check a signature of peer {peer_id[:12]}…: {exc}") from exc


def verify_body(peer_id: str, context: str, body: Any, signature: str) -> None:
    """``verify`` over ``signing_bytes(context, body)``; a body with no canonical form fails too."""
    try:
        message = signing_bytes(context, body)
    except CanonicalError as exc:
        raise SignatureError(f"signed body has no canonical form: {exc}") from exc
    verify(peer_id, message, signature)

"""``ai4all models --signal URL [MODEL]``: the models a signaling node's registry knows, with publishers.

For every model name the node lists (or only ``MODEL``), one line per publisher's record: version,
publisher id, size, file count and whether *this command* trusts the publisher (``--trust-publisher
ID``, repeatable, plus the default list). A record of any other publisher is printed as
``UNTRUSTED``, with the flag that would trust it: never used silently. Records are verified against
their publishers' keys before they are printed (``registry_client.py``); the node's own view of trust
is shown beside it, never used. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from python_peer.core.errors import CommandError

MAX_MODELS_SHOWN = 256


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="the models a signaling node's registry knows, with their publishers",
        description=(
            "List the models the registry of a signaling node knows (or one MODEL), one line per "
            "publisher's signed record: version, publisher id, size, files, and whether this command "
            "trusts the publisher (--trust-publisher ID). Records of other publishers are marked UNTRUSTED."
        ),
    )
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL", help="only this model name")
    parser.add_argument(
        "--signal", required=True, metavar="URL", help="a signaling node's URL (ws://HOST:PORT)"
    )
    parser.add_argument(
        "--trust-publisher",
        action="append",
        default=[],
        metavar="ID",
        help="a publisher whose records are shown as trusted (ai4all publish prints its id); repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print the records as one JSON object")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the node (default 10)"
    )
    parser.set_defaults(handler=run)


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return str(count)


async def _collect(url: str, model: str | None, timeout_s: float) -> list[dict[str, Any]]:
    from python_peer.identity import Identity
    from python_peer.registry_client import manifests, model_names
    from python_peer.signal_client import SignalClient, SignalClientConfig

    config = SignalClientConfig(
        urls=(url,), request_timeout_s=timeout_s, connect_timeout_s=timeout_s, learn_urls=False
    )
    rows = []
    async with await SignalClient.create(Identity.generate(), config) as client:
        names = [model] if model is not None else (await model_names(client))[:MAX_MODELS_SHOWN]
        for name in names:
            for listed in await manifests(client, name):
                rows.append({**listed.record.to_dict(), "node_trusts": listed.node_trusts})
    return rows


def run(args: argparse.Namespace) -> int:
    from python_peer.core.canonical import MODEL_RE, URL_RE
    from python_peer.core.errors import SignalClientError, SignalingError
    from python_peer.core.publisher_trust import TrustPolicy

    from . import event_loop

    if URL_RE.match(args.signal) is None:
        raise CommandError(f"--signal {args.signal!r} is not a signaling URL: give ws://HOST:PORT")
    if args.model is not None and MODEL_RE.match(args.model) is None:
        raise CommandError(f"{args.model!r} is not a model name: 1-128 of A-Z a-z 0-9 . _ : / @ + -")
    if not 0 < args.timeout <= 600:
        raise CommandError(f"--timeout {args.timeout} must be within (0, 600] seconds")
    policy = TrustPolicy(frozenset(args.trust_publisher))  # a malformed id is refused, naming the flag
    try:
        rows = event_loop.run(_collect(args.signal, args.model, args.timeout))
    except (SignalClientError, SignalingError) as exc:
        raise CommandError(f"cannot read the registry of {args.signal}: {exc}") from exc
    for row in rows:
        row["trusted"] = policy.trusts(row["body"]["publisher"])
    if args.json:
        print(json.dumps({"signal": args.signal, "records": rows}, sort_keys=True))
        return 0
    if not rows:
        what = f"model {args.model}" if args.model else "any model"
        print(f"the registry of {args.signal} holds no record of {what}", file=sys.stderr)
        return 0
    for row in rows:
        body = row["body"]
        trust = (
            "trusted"
            if row["trusted"]
            else f"UNTRUSTED (not used unless you pass --trust-publisher {body['publisher']})"
        )
        print(
            f"{body['model']}  version {body['version']}  publisher {body['publisher']}  "
            f"{_size(body['total_bytes'])} in {body['files']} files  {trust}"
        )
    return 0

"""``ai4all ledger``: read a node's ledger: ``balance`` for scripts, ``show`` for people.

``show`` says, per receipt, what it credited (full, partial or 0, and why: a client pays only what it holds).
Both read ``<data dir>/ledger.sqlite3`` and never write an identity; ID defaults to the data dir's own
identity and may be any unique prefix (8+ hex digits) of a peer id the ledger knows.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_peer.core.errors import CommandError

if TYPE_CHECKING:
    from python_peer.core.balances import LedgerReport, Settlement
    from python_peer.ledger_store import LedgerStore

MIN_PREFIX = 8


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ledger",
        help="balances and logs of the contribution ledger",
        description="Read this node's copy of the ledger (signed, co-signed receipts of served work).",
    )
    commands = parser.add_subparsers(dest="ledger_command", metavar="ACTION", required=True)
    balance = commands.add_parser(
        "balance", help="print a balance in credits (alone on stdout)", description="Print ID's balance."
    )
    show = commands.add_parser(
        "show", help="a table of a log and where its balance comes from", description="Show ID's log."
    )
    for sub in (balance, show):
        sub.add_argument("id", nargs="?", default=None, metavar="ID", help="peer id or unique prefix")
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="the node's data directory (default: $AI4ALL_DATA_DIR or ~/.local/share/ai4all)",
        )
    balance.add_argument("--units", action="store_true", help="print integer units (1 credit = 1000)")
    show.add_argument("--limit", type=int, default=50, help="show the last N entries of the log (default 50)")
    balance.set_defaults(handler=run_balance)
    show.set_defaults(handler=run_show)


def _open(args: argparse.Namespace) -> tuple[LedgerStore, str]:
    from python_peer.core.canonical import is_peer_id
    from python_peer.core.economics import network_rules
    from python_peer.identity import IDENTITY_FILE, Identity, default_data_dir
    from python_peer.ledger_store import LEDGER_FILE, LedgerStore

    data_dir = args.data_dir or default_data_dir()
    path = data_dir / LEDGER_FILE
    if not path.exists():
        raise CommandError(f"no ledger at {path}: run a peer with --data-dir {data_dir} first")
    store = LedgerStore.open(path, create=False, rules=network_rules())
    try:
        if args.id is None:
            peer_id = Identity.load(data_dir / IDENTITY_FILE).peer_id
        elif is_peer_id(args.id):
            peer_id = args.id
        else:
            peer_id = _resolve(store, args.id.lower())
    except BaseException:
        store.close()
        raise
    return store, peer_id


def _resolve(store: LedgerStore, prefix: str) -> str:
    if len(prefix) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        raise CommandError(f"ID {prefix!r:.80} is neither a peer id nor a prefix of {MIN_PREFIX}+ hex digits")
    known = set(store.report().accounts) | set(store.heads())
    matches = sorted(p for p in known if p.startswith(prefix))
    if len(matches) != 1:
        found = "no peer" if not matches else f"{len(matches)} peers"
        raise CommandError(f"{found} in this ledger start with {prefix}")
    return matches[0]


def run_balance(args: argparse.Namespace) -> int:
    from python_peer.core.economics import format_units

    store, peer_id = _open(args)
    with store:
        units = store.balance(peer_id)
    print(units if args.units else format_units(units))
    return 0


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def run_show(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from python_peer.core.economics import format_units
    from python_peer.core.entries import ForkProof, Grant
    from python_peer.core.evidence import Evidence
    from python_peer.core.holds import Hold
    from python_peer.core.receipts import ReceiptBody

    store, peer_id = _open(args)
    with store:
        report = store.report()
        head = store.head(peer_id)
        first = max(1, head.seq - max(0, args.limit) + 1) if head else 1
        entries = store.entries_from(peer_id, first, max(0, args.limit)) if head else []
        # read in the store, while it is open
        counted = {entry.hash for entry in entries if entry.hash in report.counted}
        ignored = {
            entry.hash: report.ignored[entry.hash] for entry in entries if entry.hash in report.ignored
        }
    console = Console()
    log = Table(title=f"log of {peer_id}", title_justify="left")
    for column in ("seq", "time (UTC)", "kind", "what", "counts", "credited", "hash"):
        log.add_column(column)
    for entry in entries:
        body = entry.body
        if isinstance(body, Grant):
            what = f"starter grant (nonce {body.nonce})"
        elif isinstance(body, ReceiptBody):
            r = body.receipt
            role = "served" if r.server == entry.author else "used"
            other = r.client if r.server == entry.author else r.server
            what = f"{role} {r.model} [{r.start}, {r.end}) x {r.tokens} tok, with {other[:12]}…"
        elif isinstance(body, ForkProof):
            what = f"fork proof: {body.author[:12]}… at seq {body.seq}"
        elif isinstance(body, Hold):
            consumed = (entry.author, *body.key) in report.consumed
            state = "paid by its receipt" if consumed else f"until {_when(body.expires)}"
            what = f"hold {format_units(body.amount)} credits for {body.model} [{body.start}, {body.end}) at {body.server[:12]}…, {state}"
        elif isinstance(body, Evidence):
            a = body.liar.answer
            what = f"evidence: {a.server[:12]}… lied at step {a.step} of session {a.session[:12]}…"
        else:
            what = ""
        credited = ""
        if isinstance(body, ReceiptBody) and body.receipt.id in report.settled:
            credited = _credited(report.settled[body.receipt.id], format_units)
        if entry.hash in ignored:
            counts = f"no: {ignored[entry.hash].reason}"
        else:
            counts = "yes" if entry.hash in counted else "no"
        log.add_row(
            str(entry.seq), _when(entry.time), entry.kind, what, counts, credited, entry.hash[:12] + "…"
        )
    console.print(log)
    console.print(_breakdown(report, peer_id, format_units))
    console.print(_evidence_against(report, peer_id))
    return 0


def _evidence_against(report: LedgerReport, peer_id: str) -> Any:
    """The evidence against ``peer_id`` this node holds, and the reputation it gives (core/reputation.py)."""
    from rich.table import Table

    from python_peer.core.reputation import reputation

    found = reputation(report, peer_id)
    table = Table(
        title=f"reputation: {found.level} ({len(found.accusations)} evidence entries by "
        f"{len(found.authors)} clients)",
        title_justify="left",
    )
    for column in ("time (UTC)", "by client", "session (unpaid)", "entry"):
        table.add_column(column)
    for a in found.accusations:
        table.add_row(_when(a.time), a.author[:12] + "…", a.session, a.entry[:12] + "…")
    return table


def _credited(settled: Settlement, fmt: Any) -> str:
    """What one receipt moved: full, partial or 0, and why (a client pays only what it holds)."""
    to_server = fmt(settled.earned + settled.rarity_bonus)
    if settled.status == "full":
        return f"full: {to_server} to the server, {fmt(settled.paid)} paid"
    if settled.status == "partial":
        return f"partial: {to_server}; the client could pay {fmt(settled.paid)} of {fmt(settled.price)}"
    if settled.paid == 0:
        return f"0: the client had nothing to pay {fmt(settled.price)} with"
    return f"0: the client could pay {fmt(settled.paid)}, not more than the base fee"


def _breakdown(report: LedgerReport, peer_id: str, fmt: Any) -> Any:
    from rich.table import Table

    from python_peer.core.holds import held_units
    from python_peer.ledger_store import now_ms

    account = report.accounts.get(peer_id)
    table = Table(title="balance", title_justify="left", show_header=False)
    table.add_column("item")
    table.add_column("credits", justify="right")
    if account is None:
        table.add_row("balance", fmt(0))
        return table
    rows = [
        ("starter grant", account.granted),
        ("earned serving", account.earned),
        ("rarity bonus", account.rarity_bonus),
        ("uptime bonus", account.uptime_bonus),
        ("spent on requests", -account.spent),
        ("over the cap, not credited", -account.clipped),
    ]
    for label, units in rows:
        table.add_row(label, fmt(units))
    table.add_row("[bold]balance[/bold]", f"[bold]{fmt(account.balance)}[/bold]")
    table.add_row("held for open sessions", fmt(held_units(report, peer_id, now_ms())))
    table.add_row("block-tokens served", f"{account.served_block_tokens:,}")
    table.add_row("receipts served / paid", f"{account.receipts_served} / {account.receipts_paid}")
    if account.forked_at is not None:
        table.add_row("[red]forked at seq[/red]", str(account.forked_at))
    return table

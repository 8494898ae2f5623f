"""``ai4all status``: what the peer running with a data directory serves and does now.

It asks the peer over its status socket (``status.py``: a Unix socket in the data directory, no network
port) and prints a summary for people, or the status object as JSON with ``--json``. No peer running
there is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from python_peer.core.errors import CommandError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status",
        help="what the peer running with a data directory serves: span, sessions, tokens, balance",
        description=(
            "Ask the peer running with --data-dir (over its status socket, which only this machine's same "
            "user can reach) what it serves, its open sessions, uptime, tokens served, balance and "
            "signaling nodes."
        ),
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the peer's data directory (default: $AI4ALL_DATA_DIR or ~/.local/share/ai4all)",
    )
    parser.add_argument("--json", action="store_true", help="print the status object as JSON")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the peer (default 5)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from python_peer.identity import default_data_dir

    from .status import ask_status

    if not 0 < args.timeout <= 600:
        raise CommandError(f"--timeout {args.timeout} must be within (0, 600] seconds")
    status = ask_status(args.data_dir or default_data_dir(), args.timeout)
    if args.json:
        print(json.dumps(status, sort_keys=True))
    else:
        show(status)
    return 0


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{s:02d}"


def show(status: dict[str, Any]) -> None:
    """The status as a short table for people (the peer's own words; nothing here is trusted blindly:
    every value is printed as text, never as markup)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from python_peer.core.economics import format_units
    from python_peer.core.memory_budget import gib

    def get(*path: str) -> Any:
        value: Any = status
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()

    def row(name: str, value: str) -> None:
        grid.add_row(name, Text(value))

    row("peer", str(get("peer_id")))
    row("pid", str(get("pid")))
    started = get("started_at")
    since = (
        datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(started, int | float)
        else "?"
    )
    uptime = get("uptime_s")
    row("uptime", f"{_duration(uptime) if isinstance(uptime, int | float) else '?'} (since {since})")
    row(
        "serves",
        f"{get('model')} blocks {get('span')} of {get('blocks')} ({get('dtype')}), {get('state')}",
    )
    for more in get("more_models") or []:
        row(
            "also serves",
            f"{more.get('model')} blocks {more.get('span')}: {more.get('open_sessions')} sessions open, "
            f"{more.get('tokens_served')} tokens served",
        )
    row("throughput", f"{get('throughput')} block-tokens/s ({get('throughput_source')})")
    kv = get("kv") or {}
    budget, reserved = kv.get("budget_bytes"), kv.get("reserved_bytes")
    room = (
        f"; KV {gib(reserved)} reserved of {gib(budget)}, room for {kv.get('free_tokens')} tokens"
        if isinstance(budget, int) and isinstance(reserved, int)
        else ""
    )
    row("sessions", f"{get('open_sessions')} open{room}")
    for session in (get("sessions") or [])[:8]:
        if isinstance(session, dict):
            row(
                "",
                f"client {str(session.get('client'))[:16]}... blocks {session.get('span')}: "
                f"{session.get('tokens')} tokens, idle {session.get('idle_s')} s",
            )
    row("tokens served", str(get("tokens_served")))
    balance = get("balance")
    if isinstance(balance, dict) and all(isinstance(v, int) for v in balance.values()):
        row(
            "balance",
            f"{format_units(balance['balance'])} credits (granted {format_units(balance['granted'])}, earned "
            f"{format_units(balance['earned'])}, bonuses {format_units(balance['bonuses'])}, spent "
            f"{format_units(balance['spent'])})",
        )
    else:
        row("balance", f"unknown ({get('balance_error')})")
    row("links", f"{get('links')} open")
    row("signaling", str(get("signaling", "state")))
    for node in get("signaling", "nodes") or []:
        if isinstance(node, dict):
            row("", f"{node.get('url')}  {'connected' if node.get('connected') else 'not connected'}")
    Console(highlight=False, soft_wrap=True).print(grid)

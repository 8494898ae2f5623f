"""The API's view of a node's ledger: admission before a generation (402 when the balance cannot pay)
and the balance endpoint's ``TokenBalance``. It sits above ``python_peer/ledger_service.py``, which knows
nothing of the API's types."""

from __future__ import annotations

import asyncio

from python_peer.core.receipts import ReceiptBody
from python_peer.ledger_service import LedgerService

from .types import Receipt as ReceiptView
from .types import TokenBalance


class ApiLedger:
    """The API's view of a node's ledger: admission before a generation, and the balance endpoint."""

    def __init__(self, ledger: LedgerService) -> None:
        self.ledger = ledger

    async def admit(self, model: str, blocks: int, tokens: int) -> None:
        """Refuse (``PaymentRequiredError``, a 402) a request this node's own balance could not pay for."""
        await asyncio.to_thread(self.ledger.require_payment, self.ledger.peer_id, blocks, tokens)

    async def balance(self) -> TokenBalance:
        return await asyncio.to_thread(self._balance)

    def _balance(self, recent: int = 20) -> TokenBalance:
        me = self.ledger.peer_id
        account = self.ledger.store.report().accounts.get(me)
        head = self.ledger.store.head(me)
        entries = (
            self.ledger.store.entries_from(me, max(1, head.seq - 4 * recent), 4 * recent) if head else []
        )
        receipts: list[ReceiptView] = []
        for entry in reversed(entries):
            body = entry.body
            if isinstance(body, ReceiptBody) and len(receipts) < recent:
                r = body.receipt
                served = r.server == me
                receipts.append(
                    ReceiptView(
                        id=r.id,
                        role="served" if served else "used",
                        counterparty=r.client if served else r.server,
                        model=r.model,
                        start=r.start,
                        end=r.end,
                        tokens=r.tokens,
                        time=r.time / 1000,
                    )
                )
        return TokenBalance(
            peer_id=me,
            balance=account.balance if account else 0,
            granted=account.granted if account else 0,
            earned=account.earned if account else 0,
            bonuses=(account.rarity_bonus + account.uptime_bonus) if account else 0,
            spent=account.spent if account else 0,
            receipts=receipts,
        )

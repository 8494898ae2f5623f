"""Reputation: what the ledger's evidence says about a serving peer, as a pure function of the ledger.

Standard library only. ``compute`` (``balances.py``) gathers the counted ``evidence`` entries into
``LedgerReport.accusations``; this module turns them into a level that routing reads:

- ``good``: no evidence against the peer;
- ``suspect``: evidence from one client: routing avoids the peer while any other peer covers its blocks;
- ``excluded``: evidence from ``EXCLUDE_AUTHORS`` different clients or more: clients ignore its
  announcements and serving peers refuse to serve it (docs/trust.md).

One client's evidence is its own word that two other peers agreed (``evidence.py``): a client with two
throwaway servers could accuse anyone, so one author alone only makes a peer ``suspect``, which costs an
honest peer nothing while it is the only one serving its blocks. Exclusion needs independent authors,
each of which paid a starter grant's proof of work and the sessions it checked.

Passed spot checks are the client's own knowledge (``python_peer/spot_check.py`` keeps each peer's run
of passes); they are not written to the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass

from .balances import LedgerReport
from .counting import Accusation

GOOD = "good"
SUSPECT = "suspect"
EXCLUDED = "excluded"
EXCLUDE_AUTHORS = 2  # different clients holding evidence against a peer before it is excluded


@dataclass(frozen=True)
class Reputation:
    """A peer's standing from the evidence against it: ``level`` is ``good``, ``suspect`` or ``excluded``."""

    peer_id: str
    accusations: tuple[Accusation, ...] = ()

    @property
    def authors(self) -> frozenset[str]:
        """The clients holding evidence against the peer."""
        return frozenset(a.author for a in self.accusations)

    @property
    def sessions(self) -> frozenset[tuple[str, str]]:
        """``(client, session)`` pairs the peer lied in: it earns nothing for them."""
        return frozenset((a.author, a.session) for a in self.accusations)

    @property
    def level(self) -> str:
        if len(self.authors) >= EXCLUDE_AUTHORS:
            return EXCLUDED
        return SUSPECT if self.accusations else GOOD

    @property
    def excluded(self) -> bool:
        return self.level == EXCLUDED

    @property
    def suspect(self) -> bool:
        return self.level != GOOD

    @property
    def refusal(self) -> str | None:
        """Why a serving peer refuses to open a session for this peer (``session_refused``): it is
        excluded; None when it is not. Native and browser peers both answer with this message."""
        if not self.excluded:
            return None
        return (
            f"peer {self.peer_id[:12]}… is excluded: this node holds evidence against it from "
            f"{len(self.authors)} clients"
        )


def reputation(report: LedgerReport, peer_id: str) -> Reputation:
    """``peer_id``'s reputation in ``report``."""
    return Reputation(peer_id, report.accusations.get(peer_id, ()))


def reputations(report: LedgerReport) -> dict[str, Reputation]:
    """The reputation of every peer with evidence against it (the others are ``good``)."""
    return {peer: Reputation(peer, found) for peer, found in report.accusations.items()}


__all__ = ["EXCLUDED", "EXCLUDE_AUTHORS", "GOOD", "SUSPECT", "Reputation", "reputation", "reputations"]

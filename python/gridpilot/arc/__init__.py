"""Talking to NorduGrid ARC computing elements (A-REX) through their REST 1.0 interface: a client library at the
bottom layer, beside client.py, used by the `arc` CE backend (ce/arc.py) and the tower (tower/)."""

from __future__ import annotations

from gridpilot.arc.rest import ArcAnswerError, ArcError, ArcJobGone, ArcRest, Submitted

__all__ = ["ArcAnswerError", "ArcError", "ArcJobGone", "ArcRest", "Submitted"]

"""Pure choices of where to read from and write to: replica order, candidate storage elements, new physical names.

No I/O here, so the rules are tested without servers. Storage element names compare without regard to case (ALICE
writes them as ALICE::CERN::EOS but users type them as they like).
"""

from __future__ import annotations

import uuid
from typing import Iterable, Optional, Sequence

from gridpilot.storage.base import StorageElement
from gridpilot.storage.catalogue_protocol import Replica


def _rank(close_ses: Sequence[str]) -> dict[str, int]:
    rank: dict[str, int] = {}
    for i, name in enumerate(close_ses):
        rank.setdefault(name.upper(), i)
    return rank


def order_replicas(replicas: Iterable[Replica], close_ses: Sequence[str]) -> list[Replica]:
    """Replicas on close storage elements first, in the order of `close_ses` (closest first), then the others in
    the catalogue's order. The same replica listed twice is tried once."""
    rank = _rank(close_ses)
    unique = list(dict.fromkeys(replicas))
    far = len(rank)
    # sorted() is stable: replicas of equal rank keep the catalogue's order.
    return sorted(unique, key=lambda r: rank.get(r.se.upper(), far))


def candidate_ses(explicit: Sequence[str], close_ses: Sequence[str]) -> list[str]:
    """Where to try writing, in order: the storage elements the job named, then the close ones, each once."""
    seen: dict[str, str] = {}
    for name in (*explicit, *close_ses):
        seen.setdefault(name.upper(), name)
    return list(seen.values())


def new_pfn(se: StorageElement, guid: Optional[str] = None) -> str:
    """A fresh physical URL on `se`: <prefix>/<first two hex digits>/<guid>, as ALICE names replicas.

    Never reused, so a resubmitted job or a retried copy cannot overwrite a replica someone registered; the two-digit
    directory keeps any one directory of the element small.
    """
    guid = guid or str(uuid.uuid4())
    return se.url_for(f"{guid[:2]}/{guid}")

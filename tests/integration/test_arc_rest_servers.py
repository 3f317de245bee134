"""tests/support/arex.py's start-up survives the port race: a port picked free can be taken by another process
before A-REX binds it (other test sessions start servers on this host too); start() then sees the ws daemon's
bind failure and starts again on another port, instead of failing the whole session."""

from __future__ import annotations

import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from gridpilot.arc import ArcJobGone, ArcRest

from support.arex import ArexServer, _free_port, missing_reason
from support.require import require_or_skip


def test_a_port_taken_before_arex_binds_it_is_given_up_for_another():
    reason = missing_reason()
    if reason is not None:
        require_or_skip(reason)
    base = Path(tempfile.mkdtemp(prefix="gridpilot-arex-"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        candidates = iter([port])
        server = ArexServer(base)
        server.pick_port = lambda: next(candidates, None) or _free_port()
        try:
            server.start()
            assert server.ports_lost == [port]
            assert server.port != port and server.alive()
            with ArcRest(server.rest_url, cert=server.user_cert, key=server.user_key, ca_file=server.ca_file,
                         timeout_s=30.0) as client:
                with pytest.raises(ArcJobGone):
                    client.diagnose_state("0" * 54)
        finally:
            server.stop()
            shutil.rmtree(base, ignore_errors=True)

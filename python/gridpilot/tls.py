"""Trusting central over https: the CA bundle every client checks central's certificate against, and the certificate
and key central serves with. Checked when a piece starts, so a missing or wrong file is one line naming it, not a
failure at the first request.

With no CA bundle given, a client verifies central against the system's CA certificates (a public CA); there is no
way to turn verification off.
"""

from __future__ import annotations

import ssl
from typing import Optional

from gridpilot.errors import ConfigError

#: The CA bundle (PEM) the user commands, the runner and the CE verify central with, when no flag or file says.
CA_FILE_ENV = "GRIDPILOT_CA_FILE"


def ca_context(ca_file: Optional[str] = None, ca_data: Optional[str] = None) -> ssl.SSLContext:
    """A client context that trusts the certificates of `ca_file` (a PEM file) or `ca_data` (PEM text), else the
    system's. ConfigError naming the file when it cannot be read or holds no CA certificate."""
    try:
        return ssl.create_default_context(cafile=ca_file or None, cadata=ca_data or None)
    except OSError as e:
        if isinstance(e, ssl.SSLError):
            what = f"CA file {ca_file}" if ca_file else "the CA certificates given"
            raise ConfigError(f"{what}: no PEM CA certificate in it ({e.reason or e})") from None
        raise ConfigError(f"CA file {ca_file}: {e.strerror or e}") from None


def read_ca_file(ca_file: str) -> str:
    """The text of a CA bundle, checked (ConfigError naming the file otherwise): what a piece hands on to a process
    that cannot see the file (the JobWrapper in its container)."""
    ca_context(ca_file)
    try:
        with open(ca_file, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"CA file {ca_file}: {e.strerror or e}") from None


def check_server_files(certfile: Optional[str], keyfile: Optional[str]) -> None:
    """Central's certificate (chain) and private key: both or neither, readable, and belonging together."""
    if bool(certfile) != bool(keyfile):
        raise ConfigError("--certfile and --keyfile go together: give both (https) or neither (http)")
    if not certfile:
        return
    for what, path in (("certificate file", certfile), ("key file", keyfile)):
        try:
            with open(str(path), "rb"):
                pass
        except OSError as e:
            raise ConfigError(f"{what} {path}: {e.strerror or e}") from None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # An empty password, not none: OpenSSL would otherwise prompt on the terminal for an encrypted key.
        ctx.load_cert_chain(certfile, keyfile, password=b"")
    except ssl.SSLError as e:
        raise ConfigError(f"certificate file {certfile} with key file {keyfile}: not a PEM certificate and its "
                          f"private key ({e.reason or e})") from None


__all__ = ["CA_FILE_ENV", "ca_context", "check_server_files", "read_ca_file"]

"""A small PKI made by the test with the `openssl` command (Debian `openssl`): a CA, a certificate for 127.0.0.1 and
localhost signed by it, another CA that signed nothing of central's, and a certificate of the right CA for another
host name. Nothing of the host's CA bundle is used or trusted."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from support.require import require_or_skip

#: Extensions a strict verifier (Python 3.13's VERIFY_X509_STRICT) wants in a CA and in a server certificate.
_CA_EXT = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
           "-addext", "subjectKeyIdentifier=hash"]
_LEAF_EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
subjectAltName={san}
"""


@dataclass(frozen=True)
class Pki:
    ca: Path
    host_cert: Path
    host_key: Path
    other_ca: Path
    other_name_cert: Path
    other_name_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"openssl {' '.join(args)}: {out.stderr}"


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "3", "-subj", f"/CN=gridpilot test {name}",
             *_CA_EXT, cwd=d)


def _leaf(d: Path, name: str, ca: str, san: str) -> None:
    (d / f"{name}.ext").write_text(_LEAF_EXT.format(san=san))
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
             f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "3", "-extfile", f"{name}.ext", cwd=d)


def make_pki(d: Path) -> Pki:
    if shutil.which("openssl") is None:
        require_or_skip("no openssl command (Debian package openssl) to make the test's CA")
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other-ca")
    _leaf(d, "central", "ca", "IP:127.0.0.1,DNS:localhost")
    _leaf(d, "elsewhere", "ca", "DNS:central.elsewhere.example")
    return Pki(ca=d / "ca.pem", host_cert=d / "central.pem", host_key=d / "central.key", other_ca=d / "other-ca.pem",
               other_name_cert=d / "elsewhere.pem", other_name_key=d / "elsewhere.key")

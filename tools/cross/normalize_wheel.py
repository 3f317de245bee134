"""Make a wheel from maturin independent of where the checkout lies, in place: python3 normalize_wheel.py WHEEL...

maturin puts a CycloneDX SBOM of the Rust dependency tree into the wheel (PEP 770, <dist-info>/sboms/), and names
our crate there by cargo's package id, `path+file://<absolute checkout path>#gridpilot-native@<version>`. That
path is rewritten to /build/gridpilot, the prefix the binary's own paths are remapped to (wheels.sh), and RECORD
is updated. Every entry keeps its order, timestamp and attributes, so the result stays deterministic.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sys
import zipfile

LOCAL_ID = re.compile(rb"path\+file://[^#\"]*#")
NEUTRAL = b"path+file:///build/gridpilot#"


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def normalize(wheel: str) -> bool:
    with zipfile.ZipFile(wheel) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    changed = {}
    for info, data in entries:
        if "/sboms/" in info.filename:
            new = LOCAL_ID.sub(NEUTRAL, data)
            if new != data:
                changed[info.filename] = new
    if not changed:
        return False
    data_of = {info.filename: data for info, data in entries}
    record_name = next(name for name in data_of if name.endswith(".dist-info/RECORD"))
    lines = []
    for line in data_of[record_name].decode().splitlines():
        name = line.split(",")[0]
        lines.append(record_line(name, changed[name]) if name in changed else line)
    changed[record_name] = ("\n".join(lines) + "\n").encode()
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(tmp, "w") as zout:
        for info, data in entries:
            zout.writestr(info, changed.get(info.filename, data))
    os.replace(tmp, wheel)
    return True


if __name__ == "__main__":
    for path in sys.argv[1:]:
        if normalize(path):
            print(f"normalized the SBOM's checkout path in {os.path.basename(path)}", file=sys.stderr)

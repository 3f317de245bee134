"""Fuzz target for the JDL reader: any bytes must give a job, or a JdlError, and nothing else.

Not collected by pytest (the name does not start with test_). Run it by hand or in a nightly job:

    python tests/support/fuzz_jdl.py                      # with atheris installed: coverage-guided, until stopped
    python tests/support/fuzz_jdl.py -atheris_runs=100000 # atheris (libFuzzer) options pass through
    python tests/support/fuzz_jdl.py --seconds 60         # without atheris: mutates the examples at random for 60 s

Every successful parse is also written back and parsed again, which must give the same tree.
"""

from __future__ import annotations

import pathlib
import random
import sys
import time
from typing import List

from gridpilot.errors import JdlError
from gridpilot.jdl import parse, parse_expression, parse_job, write
from gridpilot.jdl.loader import decode

ROOT = pathlib.Path(__file__).resolve().parents[2]


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris looks for
    try:
        text = decode(data)
    except JdlError:
        return
    try:
        doc = parse(text)
    except JdlError:
        pass
    else:
        again = parse(write(doc))
        if again != doc:
            raise AssertionError(f"round trip changed the document for input {text!r}")
    try:
        parse_job(text)
    except JdlError:
        pass
    try:
        parse_expression(text)
    except JdlError:
        pass


def _seeds() -> List[bytes]:
    files = sorted((ROOT / "examples").glob("*.jdl")) + sorted((ROOT / "tests" / "fixtures" / "jdl").rglob("*.jdl"))
    return [p.read_bytes() for p in files] or [b'Executable = "/bin/true";']


_TOKENS = [b'"', b"{", b"}", b"(", b")", b";", b",", b"=", b"==", b"&&", b"||", b"!", b"\\", b"\n", b"#", b"//",
           b"[", b"]", b"other.", b"member(", b"1e999", b"-", b"\xff", b"\x00", b"@disk=", b"LF:", b":"]  # fmt: skip


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randint(0, len(b))
        if op == 0 and b:
            del b[pos : pos + rng.randint(1, 16)]
        elif op == 1:
            b[pos:pos] = rng.choice(_TOKENS)
        elif op == 2 and b:
            b[min(pos, len(b) - 1)] = rng.randrange(256)
        else:
            other = rng.choice(_SEEDS)
            start = rng.randint(0, len(other))
            b[pos:pos] = other[start : start + rng.randint(1, 64)]
    return bytes(b)


_SEEDS: List[bytes] = []


def _random_fuzz(seconds: float, seed: int) -> int:
    _SEEDS.extend(_seeds())
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    while time.monotonic() < deadline:
        TestOneInput(_mutate(rng, rng.choice(_SEEDS)))
        runs += 1
    print(f"fuzz_jdl: {runs} inputs in {seconds:.0f} s, no failure (seed {seed})")
    return 0


def main(argv: List[str]) -> int:
    if "--seconds" in argv:
        i = argv.index("--seconds")
        seconds = float(argv[i + 1])
        seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else int(time.time())
        return _random_fuzz(seconds, seed)
    try:
        import atheris  # type: ignore
    except ImportError:
        print("atheris is not installed; falling back to 60 s of random mutation (see --seconds)", file=sys.stderr)
        return _random_fuzz(60.0, int(time.time()))
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))

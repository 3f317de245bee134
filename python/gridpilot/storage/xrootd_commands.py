"""XRootD through the `xrdcp` and `xrdfs` commands, for nodes where the Python bindings cannot be imported.

Data still passes through this process exactly once: xrdcp reads the upload from its stdin and writes the download
to its stdout (`-` as source or target), so the checksums are computed on the way, as with the bindings.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from typing import IO, Iterator, Optional

from gridpilot.errors import FileAlreadyExists, NoSuchFile, StorageError, TransferError
from gridpilot.storage.xrootd_common import RemoteStat, apply_client_env, error_for, parse_checksum_reply, split_url

CHUNK = 8 << 20
# Metadata commands answer in milliseconds; this only bounds a hung server beyond XRD_REQUESTTIMEOUT.
_COMMAND_TIMEOUT_S = 900.0


def commands_available() -> bool:
    return shutil.which("xrdcp") is not None and shutil.which("xrdfs") is not None


class CommandBackend:
    """The Backend protocol (xrootd_common.Backend) over xrdcp and xrdfs."""

    name = "commands"

    def __init__(self, se: str) -> None:
        self._se = se
        self._env = dict(apply_client_env(dict(os.environ)))

    def _xrdfs(self, endpoint: str, url: str, op: str, *args: str) -> str:
        try:
            out = subprocess.run(
                ["xrdfs", endpoint, *args],
                capture_output=True,
                text=True,
                env=self._env,
                timeout=_COMMAND_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise TransferError(f"xrdfs {args[0]}: {e}", se=self._se, url=url, op=op) from e
        if out.returncode != 0:
            # xrdfs prints the server's answer ("[3011] ... no such file") on stderr, a summary on stdout.
            raise error_for(
                f"{out.stderr.strip()} {out.stdout.strip()}",
                0,
                se=self._se,
                url=url,
                op=op,
                what=f"xrdfs {args[0]} exit {out.returncode}",
            )
        return out.stdout

    def stat(self, endpoint: str, path: str, url: str) -> RemoteStat:
        text = self._xrdfs(endpoint, url, "stat", "stat", path)
        fields = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        try:
            size = int(fields["Size"])
        except (KeyError, ValueError):
            raise TransferError(f"unexpected xrdfs stat output {text!r}", se=self._se, url=url, op="stat") from None
        return RemoteStat(size=size, is_dir="IsDir" in fields.get("Flags", ""))

    def checksum(self, endpoint: str, path: str, url: str, algo: str) -> tuple[str, str]:
        arg = path if algo == "adler32" else f"{path}?cks.type={algo}"
        text = self._xrdfs(endpoint, url, "checksum", "query", "checksum", arg)
        try:
            return parse_checksum_reply(text)
        except ValueError as e:
            raise TransferError(str(e), se=self._se, url=url, op="checksum") from None

    def rm(self, endpoint: str, path: str, url: str) -> None:
        self._xrdfs(endpoint, url, "delete", "rm", path)

    def ls(self, endpoint: str, path: str, url: str) -> list[tuple[str, RemoteStat]]:
        text = self._xrdfs(endpoint, url, "list", "ls", "-l", path)
        out = []
        for line in text.splitlines():
            # "-rw-r--r-- owner group SIZE YYYY-MM-DD HH:MM:SS /abs/path"; a path may contain spaces.
            parts = line.split(None, 6)
            if len(parts) < 7:
                continue
            mode, size, full = parts[0], parts[3], parts[6]
            out.append((full.rstrip("/").rsplit("/", 1)[-1], RemoteStat(size=int(size), is_dir=mode.startswith("d"))))
        return out

    def _xrdcp(self, args: list[str], stdin: int, stdout: int, stderr: IO[bytes]) -> subprocess.Popen[bytes]:
        try:
            return subprocess.Popen(
                ["xrdcp", "--silent", *args], stdin=stdin, stdout=stdout, stderr=stderr, env=self._env
            )
        except OSError as e:
            raise TransferError(f"cannot run xrdcp: {e}", se=self._se, url=args[-1], op="put") from e

    def _failure(self, proc: subprocess.Popen[bytes], stderr: IO[bytes], url: str, op: str) -> StorageError:
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace").strip()
        return error_for(text or "no message", 0, se=self._se, url=url, op=op, what=f"xrdcp exit {proc.returncode}")

    def read_blocks(self, url: str) -> Iterator[bytes]:
        # stderr to a file, not a pipe: nobody reads it while data flows, and a full pipe would stall xrdcp.
        with tempfile.TemporaryFile() as err:
            proc = self._xrdcp([url, "-"], subprocess.DEVNULL, subprocess.PIPE, err)
            assert proc.stdout is not None
            finished = False
            try:
                while True:
                    block = proc.stdout.read(CHUNK)
                    if not block:
                        break
                    yield block
                finished = True
            finally:
                if not finished:
                    proc.kill()  # the consumer stopped early (error, verification failure): stop this copy
                proc.stdout.close()
                proc.wait()
            if proc.returncode != 0:
                raise self._failure(proc, err, url, "get")

    def write(self, url: str, blocks: Iterator[bytes]) -> None:
        # --posc: the server drops the file unless xrdcp closes it successfully. --path: create parent directories.
        # No --force: an existing replica is never replaced.
        with tempfile.TemporaryFile() as err:
            proc = self._xrdcp(["--posc", "--path", "-", url], subprocess.PIPE, subprocess.DEVNULL, err)
            assert proc.stdin is not None
            cause: Optional[BaseException] = None
            try:
                for block in blocks:
                    proc.stdin.write(block)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # xrdcp stopped reading: its exit status and stderr say why
            except BaseException as e:
                cause = e
                proc.kill()  # dying before closing the file is what makes the server drop it (POSC)
            finally:
                if not proc.stdin.closed:
                    try:
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                proc.wait()
            if cause is None and proc.returncode == 0:
                return
            failure = cause if cause is not None else self._failure(proc, err, url, "put")
            note = self._remove_partial(url, failure)
            if isinstance(failure, StorageError):
                raise type(failure)(f"{failure.what}{note}", se=failure.se, url=failure.url, op=failure.op) from failure
            if isinstance(failure, Exception):
                raise TransferError(f"{failure}{note}", se=self._se, url=url, op="put") from failure
            raise failure

    def _remove_partial(self, url: str, failure: BaseException) -> str:
        if isinstance(failure, FileAlreadyExists):
            return ""  # the file there is someone else's: never remove it
        endpoint, path = split_url(url)
        try:
            self.rm(endpoint, path, url)
            return " (partial copy removed)"
        except NoSuchFile:
            return " (no partial copy left)"
        except StorageError as e:
            return f" (partial copy not removed: {e.what})"

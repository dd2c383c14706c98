"""A command run in a real pseudo-terminal, its screen collected as it draws (for live views)."""

from __future__ import annotations

import os
import pty
import subprocess
import threading
from collections.abc import Sequence
from types import TracebackType


class Terminal:
    """Runs argv with a pty as its stdin, stdout and stderr; ``screen()`` is all it wrote so far."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None, columns: int = 120) -> None:
        master, slave = pty.openpty()
        env = dict(env if env is not None else os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES="40")
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # the terminal closed with the process
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def screen(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=10)
        os.close(self._master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

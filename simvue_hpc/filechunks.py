"""A saved file as the wire carries it: its sha256 and size, then its bytes in FILE_CHUNK messages."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from .protocol import FileChunk

FILE_CHUNK_BYTES = 1 << 20


def file_digest(path: Path) -> tuple[str, int]:
    """The file's sha256 (its name in the store) and size, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(FILE_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def file_chunks(path: Path, sha: str, size: int) -> Iterator[FileChunk]:
    """The file's bytes as chunks of at most FILE_CHUNK_BYTES; the last says ``final`` (an empty file
    is one empty final chunk)."""
    offset = 0
    with open(path, "rb") as fh:
        while True:
            data = fh.read(FILE_CHUNK_BYTES)
            final = offset + len(data) >= size or not data
            yield FileChunk(sha, offset, final, data)
            offset += len(data)
            if final:
                return

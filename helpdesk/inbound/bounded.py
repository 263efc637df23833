"""Read a mail from a file or a pipe without ever holding more than the size limit.

``helpdesk ingest`` gets whatever an MTA pipes in. ``read_mail`` holds at most
``limit + 1`` bytes: a larger mail keeps only its header block (for the polite
too-large notice, as the IMAP fetcher does with ``BODY.PEEK[HEADER]``); the rest is
read to the end, counted and dropped, so that the MTA never meets a closed pipe.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import BinaryIO

_CHUNK = 1 << 16
#: The most of an oversized mail's header block kept for the notice: a real one is a
#: few KB (long Received chains, DKIM signatures); the parser cuts what is longer.
HEADER_BUDGET = 256 * 1024


@dataclass(frozen=True, slots=True)
class ReadMail:
    raw: bytes  # the whole mail; only its header block when ``too_large``
    size: int  # the mail's size in bytes, counted to the end
    too_large: bool


def read_mail(stream: BinaryIO, limit: int) -> ReadMail:
    buffer = io.BytesIO()  # grows in place; getvalue() hands over its bytes without a copy
    size = 0
    while size <= limit and (chunk := stream.read(min(_CHUNK, limit + 1 - size))):
        buffer.write(chunk)
        size += len(chunk)
    if size <= limit:
        return ReadMail(buffer.getvalue(), size, too_large=False)
    head = header_block(buffer.getbuffer()[:HEADER_BUDGET].tobytes())
    del buffer
    while chunk := stream.read(_CHUNK):
        size += len(chunk)
    return ReadMail(head, size, too_large=True)


def header_block(data: bytes) -> bytes:
    """The header block at the start of *data*: up to its first empty line, or, when
    none is found, up to its last complete line."""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    if ends:
        return data[:min(ends)]
    last = data.rfind(b"\n")
    return data[:last + 1] if last >= 0 else data

"""What a failed attempt records: type, message, bounded traceback, stable fingerprint."""

from __future__ import annotations

import hashlib
import os
import traceback
from dataclasses import dataclass

__all__ = ("MESSAGE_TYPE", "Failure", "describe_failure", "describe_message", "fingerprint")

MESSAGE_TYPE = "Error"
"""The ``error_type`` of a failure recorded from a message string (``batch.error("...")``)."""

_MAX_MESSAGE = 4000
_MAX_TRACEBACK = 16_000
_MAX_FRAMES = 40


@dataclass(frozen=True, slots=True)
class Failure:
    """An exception, reduced to what the ledger stores."""

    error_type: str
    message: str
    traceback: str
    fingerprint: str


def _type_name(exc: BaseException) -> str:
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaves(inner))
        return out
    return [exc]


def _frames(exc: BaseException) -> list[str]:
    """Normalised frames: file name (no directory), function and source line.

    Line numbers and directories are left out, so the same failure in another checkout,
    virtualenv or process hashes the same; messages are left out because they carry ids.
    """
    frames = traceback.extract_tb(exc.__traceback__)[-_MAX_FRAMES:]
    return [f"{os.path.basename(f.filename)}:{f.name}:{(f.line or '').strip()}" for f in frames]


def fingerprint(exc: BaseException) -> str:
    """A stable hash of the exception's type(s) and normalised frames."""
    digest = hashlib.sha256()
    for leaf in _leaves(exc):
        digest.update(_type_name(leaf).encode())
        for frame in _frames(leaf):
            digest.update(b"\x00" + frame.encode())
        digest.update(b"\x01")
    return digest.hexdigest()[:32]


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [{len(text) - limit} characters cut] ...\n{text[-half:]}"


def _storable(text: str) -> str:
    r"""``text`` without NUL characters, which PostgreSQL cannot store in a text column.

    They are spelled out (``\x00``) so that binary junk in a message stays visible.
    """
    return text.replace("\x00", "\\x00")


def describe_failure(exc: BaseException) -> Failure:
    """Reduce ``exc`` (an exception group records every leaf) to a ``Failure``."""
    leaves = _leaves(exc)
    if isinstance(exc, BaseExceptionGroup):
        error_type = _type_name(exc)
        message = f"{exc.message}: " + "; ".join(f"{_type_name(leaf)}: {leaf}" for leaf in leaves)
    else:
        error_type = _type_name(exc)
        message = str(exc)
    text = "".join(traceback.format_exception(exc))
    return Failure(
        error_type=_storable(error_type)[:255],
        message=_bounded(_storable(message), _MAX_MESSAGE),
        traceback=_bounded(_storable(text), _MAX_TRACEBACK),
        fingerprint=fingerprint(exc),
    )


def describe_message(message: str) -> Failure:
    """A failure given as a message (the seed's ``batch.failed("...")``), without a traceback.

    Its fingerprint hashes the message: there are no frames to group by.
    """
    text = _bounded(_storable(message), _MAX_MESSAGE)
    digest = hashlib.sha256(f"{MESSAGE_TYPE}\x00{message}".encode()).hexdigest()[:32]
    return Failure(error_type=MESSAGE_TYPE, message=text, traceback="", fingerprint=digest)

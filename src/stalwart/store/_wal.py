"""Reading an SQLite write-ahead log the way SQLite's recovery does, to see what it drops.

Why our own parser: SQLite reads a ``-wal`` file only up to the first frame that fails
its checksum and silently ignores everything after it (and every frame of an incomplete
transaction). That is right after a crash in the middle of a write, and wrong after a
flipped byte or a cut file: the journal then reads as an older one with no warning, and
the next checkpoint makes the loss permanent. SQLite offers no way to ask what it
ignored, so this module parses the file itself — the format is documented at
https://www.sqlite.org/fileformat2.html#walformat — and computes the checksums as
specified there.

Which ignored frames are damage and which the normal rest of a crash:

* frames of the current WAL generation (their salts match the header's) found *after*
  a frame that fails its checksum: a torn write is always the last thing written, so
  something after it means the break is damage;
* a WAL header that fails its checksum in front of frames: SQLite ignores them all;
* the wal-index (``-shm``), when it is there and belongs to this generation, records
  how many frames were committed (``mxFrame``); fewer readable than that means committed
  transactions were lost (a cut or damaged end of the file).

An incomplete last transaction with no such evidence is what a crash mid-write leaves
behind; it is reported as a note, not as damage.

The ``-shm`` layout used here (two copies of a 48-byte header in native byte order, the
second word group holding ``mxFrame``) is described at
https://www.sqlite.org/walformat.html. It must be read before any SQLite connection
opens the file: the first connection rebuilds it from the WAL.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass, field
from typing import final

__all__ = ["WalReport", "check_wal"]

_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_WAL_VERSION = 3007000
_HEADER = 32
_FRAME_HEADER = 24
_MASK = 0xFFFFFFFF


def _checksum(data: bytes | memoryview, big_endian: bool, s0: int = 0,
              s1: int = 0) -> tuple[int, int]:
    """SQLite's WAL checksum of ``data`` (a multiple of 8 bytes), continuing from
    ``(s0, s1)``."""
    n = len(data) // 4
    words = struct.unpack(f"{'>' if big_endian else '<'}{n}I", data)
    it = iter(words)
    for a, b in zip(it, it, strict=True):
        s0 = (s0 + a + s1) & _MASK
        s1 = (s1 + b + s0) & _MASK
    return s0, s1


@final
@dataclass(frozen=True, slots=True)
class WalReport:
    """What a WAL file holds, and what SQLite would ignore of it.

    Attributes:
        path: the ``-wal`` file.
        exists: whether there is one (a journal closed cleanly has none).
        frames: frames of the current generation that SQLite reads (up to the last
            complete transaction).
        damage: what is wrong, one line each; empty when nothing was lost.
        notes: what SQLite ignores that is no loss (an interrupted last transaction,
            frames of an earlier generation).
    """

    path: str
    exists: bool
    frames: int = 0
    damage: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def damaged(self) -> bool:
        return bool(self.damage)


def _shm_committed(shm_path: str, salts: bytes) -> int | None:
    """``mxFrame`` from the wal-index header, if it is valid and of this generation."""
    try:
        with open(shm_path, "rb") as fh:
            head = fh.read(96)
    except OSError:
        return None
    if len(head) < 96 or head[:48] != head[48:96]:
        return None  # absent, being written, or never initialised
    order = "<" if sys.byteorder == "little" else ">"
    version, _, _, is_init, big_end, _, mx_frame = struct.unpack_from(f"{order}IIIBBHI",
                                                                       head)
    if version != _WAL_VERSION or not is_init:
        return None
    del big_end  # the WAL file's checksum order; the index's own checksum is native
    want = _checksum(head[:40], big_endian=sys.byteorder == "big")
    if struct.unpack_from(f"{order}II", head, 40) != want or head[32:40] != salts:
        return None
    return int(mx_frame)


def check_wal(db_path: str) -> WalReport:
    """Read ``db_path``'s ``-wal`` (and ``-shm``) and report what SQLite would drop.

    Reads only; call it before opening the database with SQLite.
    """
    wal_path = db_path + "-wal"
    # The index first: a commit updates it after writing its frames, so frames counted
    # there were already in the WAL when it is read next.
    try:
        with open(wal_path, "rb") as fh:
            salts_now = fh.read(_HEADER)[16:24]
    except FileNotFoundError:
        return WalReport(wal_path, exists=False)
    committed = _shm_committed(db_path + "-shm", salts_now)
    with open(wal_path, "rb") as fh:
        data = fh.read()
    if data[16:24] != salts_now:
        committed = None  # the WAL was restarted meanwhile: the index was of the last one
    return _scan(wal_path, data, committed)


def _scan(wal_path: str, data: bytes, committed: int | None) -> WalReport:
    if len(data) < _HEADER:
        return WalReport(wal_path, exists=True, notes=(
            ("the WAL holds a partial header and no frames",) if data else ()))
    magic, version, page_size = struct.unpack_from(">III", data)
    big_endian = magic == _MAGIC_BE
    frame_size = _FRAME_HEADER + page_size
    header_ok = (magic in (_MAGIC_LE, _MAGIC_BE) and version == _WAL_VERSION
                 and page_size >= 512 and page_size & (page_size - 1) == 0
                 and _checksum(data[:24], big_endian) == struct.unpack_from(">II", data, 24))
    if not header_ok:
        if len(data) >= _HEADER + _FRAME_HEADER + 512:
            return WalReport(wal_path, exists=True, damage=(
                "the WAL header fails its checksum: SQLite ignores all "
                f"{len(data) - _HEADER} bytes of frames after it",))
        return WalReport(wal_path, exists=True, notes=("the WAL header is incomplete",))
    salts = data[16:24]
    s0, s1 = struct.unpack_from(">II", data, 24)
    view = memoryview(data)
    total = (len(data) - _HEADER) // frame_size
    frames = last_commit = 0
    broken_at: int | None = None
    for i in range(total):
        off = _HEADER + i * frame_size
        if view[off + 8:off + 16] != salts:
            broken_at = i + 1  # an earlier generation's frame ends this one, unless
            break              # frames of this one follow (damaged salts): see below
        s0, s1 = _checksum(view[off:off + 8], big_endian, s0, s1)
        s0, s1 = _checksum(view[off + _FRAME_HEADER:off + frame_size], big_endian, s0, s1)
        if (s0, s1) != struct.unpack_from(">II", data, off + 16) or not struct.unpack_from(
                ">I", data, off)[0]:
            broken_at = i + 1
            break
        frames = i + 1
        if struct.unpack_from(">I", data, off + 4)[0]:
            last_commit = frames
    damage: list[str] = []
    notes: list[str] = []
    if broken_at is not None:
        later = [j + 1 for j in range(broken_at, total)
                 if view[_HEADER + j * frame_size + 8:_HEADER + j * frame_size + 16] == salts]
        if later:
            damage.append(
                f"WAL frame {broken_at} fails its checksum and {len(later)} frame(s) of "
                f"the same generation follow it: SQLite ignores frames {broken_at}-"
                f"{later[-1]}, the journal's last transactions")
        elif view[_HEADER + (broken_at - 1) * frame_size + 8:
                  _HEADER + (broken_at - 1) * frame_size + 16] != salts:
            broken_at = None  # the rest is an earlier generation's: nothing ignored
    if committed is not None and committed > last_commit:
        damage.append(
            f"the WAL index records {committed} committed frame(s) but only {last_commit} "
            "can be read: the end of the WAL is damaged or cut, and its last "
            "transactions are lost to SQLite")
    if not damage:
        partial = len(data) - _HEADER - total * frame_size
        if frames > last_commit or broken_at is not None or partial:
            notes.append(
                "the WAL ends with an incomplete transaction (a write interrupted by a "
                "crash); SQLite ignores it, as it was never committed")
    return WalReport(wal_path, exists=True, frames=last_commit, damage=tuple(damage),
                     notes=tuple(notes))


def wal_is_settled(db_path: str) -> bool:
    """Whether there is no ``-wal`` or an empty one (no frames to read)."""
    try:
        return os.path.getsize(db_path + "-wal") == 0
    except FileNotFoundError:
        return True

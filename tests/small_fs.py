"""A small file system for disk-full tests: a tmpfs the test mounts (when root), else a fallback.

``small_filesystem(path, size_bytes)`` mounts a tmpfs of ``size_bytes`` on ``path`` when the
process may (root, and mount(8) allows it), and always unmounts it on exit. When it may not, the
directory is an ordinary one and ``fs.mounted`` is False: the test then caps its LMDB map at
``size_bytes`` instead (``fs.map_bytes_max``), which fills the same way through the map-full path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MOUNT_TIMEOUT_S = 10.0
FILLER_CHUNK_BYTES = 64 * 1024
#: Bounds the filler loop: chunks written at most (a 64 MiB file system).
FILLER_CHUNKS_MAX = 1024


@dataclass
class SmallFs:
    path: Path
    size_bytes: int
    mounted: bool

    @property
    def map_bytes_max(self) -> int | None:
        """The LMDB map cap to use: None on a real small file system (it fills first)."""
        return None if self.mounted else self.size_bytes

    def require_mounted(self) -> None:
        """Skip a test that needs a real file system to fill when this process may not mount one
        (not root). Under CI (``CI`` set: .ci/run runs as root) that is a failure, never a skip."""
        if self.mounted:
            return
        import pytest

        if os.environ.get("CI"):
            pytest.fail("CI runs as root and must be able to mount a tmpfs for the disk-full tests")
        pytest.skip("needs permission to mount a tmpfs (run as root)")

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def grow(self, size_bytes: int) -> None:
        """Give the file system more room (remount the tmpfs larger); mounted only."""
        assert self.mounted
        _run(["mount", "-o", f"remount,size={size_bytes}", str(self.path)])
        self.size_bytes = size_bytes

    def fill(self, leave_bytes: int, name: str = "filler") -> Path:
        """Write a filler file until at most ``leave_bytes`` are free; mounted only."""
        assert self.mounted
        filler = self.path / name
        with open(filler, "ab") as f:
            for _ in range(FILLER_CHUNKS_MAX):
                room = self.free_bytes() - leave_bytes
                if room <= 0:
                    break
                try:
                    f.write(b"\0" * min(room, FILLER_CHUNK_BYTES))
                    f.flush()
                except OSError:
                    break
        return filler


def _run(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=MOUNT_TIMEOUT_S, check=True)


def _may_mount() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None


@contextlib.contextmanager
def small_filesystem(path: Path, size_bytes: int) -> Iterator[SmallFs]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = False
    if _may_mount():
        try:
            _run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)])
            mounted = True
        except (OSError, subprocess.SubprocessError):
            mounted = False  # no permission in this container: fall back to a capped map
    try:
        yield SmallFs(path, size_bytes, mounted)
    finally:
        if mounted:
            try:
                _run(["umount", str(path)])
            except subprocess.SubprocessError:
                # Still busy (a file left open by a failing test): detach it now, freed when closed.
                _run(["umount", "-l", str(path)])

"""GPU claims of the `gpu` deployment profile: each running GPU step holds its own devices.

The Dagster concurrency pool `gpu` caps how many GPU steps run at once; this module decides
*which* GPU each of them uses. A device is claimed by taking an exclusive `flock` on its lock
file (`<lock_dir>/gpu-<id>.lock`, the claimant's run/step written inside), so concurrently
running steps, in any process or run on this machine, get distinct devices. The claim is
released when the step ends, and by the kernel when its process dies, so a crashed step never
leaves a device booked. POSIX only (the `gpu` profile targets Linux GPU machines).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dagster import Config
from pydantic import Field

DEFAULT_WAIT_S = 3600.0
POLL_S = 2.0


class NoFreeGpu(RuntimeError):
    """Every device is claimed by other steps (the message says by whom)."""


@dataclass(frozen=True)
class GpuClaim:
    """Devices held by one step.

    `ordinals` index the visible device list, i.e. torch's `cuda:N` in this process (which sees
    the list through CUDA_VISIBLE_DEVICES); `ids` are the list's own entries, what a child
    process gets as its CUDA_VISIBLE_DEVICES.
    """

    ordinals: tuple[int, ...]
    ids: tuple[str, ...]
    owner: str

    @property
    def device(self) -> str:
        """The first claimed device as torch names it in this process."""
        return f"cuda:{self.ordinals[0]}"

    @property
    def cuda_visible_devices(self) -> str:
        """CUDA_VISIBLE_DEVICES for a child process that should see exactly the claimed devices."""
        return ",".join(self.ids)


class GpuAllocator:
    """Hands out distinct devices of `devices` (a visible device list) to concurrent claimants."""

    def __init__(self, devices: Sequence[str], lock_dir: str | Path) -> None:
        if not devices:
            raise ValueError("no GPU devices to claim from")
        self.devices = tuple(str(d) for d in devices)
        self.lock_dir = Path(lock_dir)
        self._held: dict[GpuClaim, list[int]] = {}

    def _lock_path(self, device: str) -> Path:
        return self.lock_dir / f"gpu-{device}.lock"

    def _try_lock(self, device: str) -> int | None:
        import fcntl

        path = self._lock_path(device)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except PermissionError:  # another user's lock file: lock it read-only, owner not recorded
            fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return None
        return fd

    def owners(self) -> dict[str, str]:
        """Device -> who holds it, as written in its lock file (free devices are left out)."""
        out = {}
        for device in self.devices:
            try:
                text = self._lock_path(device).read_text().strip()
            except OSError:
                continue
            if text:
                out[device] = text
        return out

    def try_claim(self, owner: str, count: int = 1) -> GpuClaim | None:
        """`count` free devices for `owner`, or None (nothing kept) when fewer are free."""
        if not 1 <= count <= len(self.devices):
            raise ValueError(f"cannot claim {count} of {len(self.devices)} devices ({', '.join(self.devices)})")
        if not self.lock_dir.is_dir():
            self.lock_dir.mkdir(parents=True, exist_ok=True)
            if str(self.lock_dir) == default_lock_dir():
                try:
                    os.chmod(self.lock_dir, 0o1777)  # the machine-wide default is shared, like /tmp
                except OSError:
                    pass
        taken: list[tuple[int, str, int]] = []
        for ordinal, device in enumerate(self.devices):
            fd = self._try_lock(device)
            if fd is not None:
                taken.append((ordinal, device, fd))
                if len(taken) == count:
                    break
        if len(taken) < count:
            for _, _, fd in taken:
                os.close(fd)  # closing the last descriptor drops the lock
            return None
        record = f"{owner} (pid {os.getpid()})\n".encode()
        for _, _, fd in taken:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, record, 0)
            except OSError:
                pass  # read-only lock file: the claim holds, the note is only for people
        claim = GpuClaim(tuple(o for o, _, _ in taken), tuple(d for _, d, _ in taken), owner)
        self._held[claim] = [fd for _, _, fd in taken]
        return claim

    def claim(self, owner: str, count: int = 1, wait_s: float = 0.0, poll_s: float = POLL_S) -> GpuClaim:
        """`count` devices for `owner`, waiting up to `wait_s` seconds for them to free up."""
        deadline = time.monotonic() + wait_s
        while True:
            claim = self.try_claim(owner, count)
            if claim is not None:
                return claim
            if time.monotonic() >= deadline:
                held = "; ".join(f"{d}: {o}" for d, o in self.owners().items()) or "unknown holders"
                raise NoFreeGpu(
                    f"{owner}: no {count} free GPU(s) among {', '.join(self.devices)} after {wait_s:g}s "
                    f"(held by {held}; lock files in {self.lock_dir}). Is the `gpu` concurrency pool "
                    "larger than the number of visible GPUs?"
                )
            time.sleep(poll_s)

    def release(self, claim: GpuClaim) -> None:
        """Give the claimed devices back."""
        for fd in self._held.pop(claim, []):
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            os.close(fd)

    @contextmanager
    def claimed(self, owner: str, count: int = 1, wait_s: float = 0.0) -> Iterator[GpuClaim]:
        """Hold `count` devices for the duration of the block."""
        claim = self.claim(owner, count, wait_s)
        try:
            yield claim
        finally:
            self.release(claim)


def default_lock_dir() -> str:
    """One folder per machine (GPUs are per machine, whichever Dagster instance or user runs)."""
    return str(Path(tempfile.gettempdir()) / "gdo-gpu-slots")


def visible_gpus(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES's entries when it is set, else
    0..torch.cuda.device_count()-1."""
    env = os.environ if env is None else env
    raw = env.get("CUDA_VISIBLE_DEVICES")
    if raw is not None:
        return tuple(d.strip() for d in raw.split(",") if d.strip())
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count()))


class GpuSlots(Config):
    """Per-step GPU claims (the `gpu` profile); with no devices, steps use their configured device."""

    devices: list[str] = Field(default_factory=list, description="Visible GPU ids to claim from, e.g. ['0', '1'].")
    lock_dir: str = Field(default_factory=default_lock_dir, description="Folder of the per-device lock files.")
    wait_s: float = Field(default=DEFAULT_WAIT_S, description="How long a step waits for a free GPU.")

    @contextmanager
    def claimed(self, owner: str, count: int = 1) -> Iterator[GpuClaim | None]:
        """The devices of one step while it runs (None: no claiming configured)."""
        if not self.devices:
            yield None
            return
        with GpuAllocator(self.devices, self.lock_dir).claimed(owner, count, self.wait_s) as claim:
            yield claim

"""One writer per run folder: `<output_dir>/.digseg-train.lock`, held by the main process while it trains.

    with RunFolderLock(output_dir):      # DigsegError at once if another run holds the folder
        ...train...

The lock file holds {"host", "pid", "started"} of its holder. It is created with O_CREAT | O_EXCL, so of two
runs starting at once exactly one gets it, also on a network file system shared by several machines. It is
removed when the holder releases it (the end of training, an error, Ctrl-C, process exit). While held, a thread
of the holder touches it every HEARTBEAT_S seconds.

A SIGKILLed or crashed run leaves its file behind. On the same host the next run finds that the pid is gone and
takes the lock over with a warning. The pid of another host cannot be checked from here: its lock is refused,
naming that host, while it shows signs of life; one untouched for STALE_AFTER_S seconds (a run killed there, a
pre-empted job requeued elsewhere) is taken over with a warning.

Within one process the lock is re-entrant (`digseg train` takes it before loading the model, the trainer again
when it is built), so a second Trainer on the same folder in the same Python process is not refused.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import DigsegError

logger = logging.getLogger("digseg.train")

LOCK_FILE = ".digseg-train.lock"
HEARTBEAT_S = 15  # the holder touches its lock file this often
STALE_AFTER_S = 120  # a lock of another host untouched this long is taken over (clocks of two hosts may differ a bit)


@dataclass
class _Holding:
    """A lock file this process holds: how many holders in it, the heartbeat thread's stop switch, and whether
    taking the lock created the run folder (then a run that wrote nothing there leaves no folder behind)."""

    count: int = 1
    stop: threading.Event = field(default_factory=threading.Event)
    created_folder: bool = False


_HELD: dict[Path, _Holding] = {}


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            os.utime(path)
        except OSError:  # deleted by hand, or the file system is away for a moment: the holder trains on
            pass


def _me() -> dict[str, Any]:
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started}


def describe(holder: dict[str, Any]) -> str:
    """'pid 123 on host gpu-7, started 2026-05-01T10:00:00+00:00'."""
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _process_gone(pid: int) -> bool:
    """True when no process `pid` runs on this machine (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class RunFolderLock:
    """The lock of run folder `folder` (created if missing). `acquire()` / `release()`, or a `with` block."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._held: Path | None = None  # the resolved lock file, while this object holds it

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self._held:
            return
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _HELD:  # this process holds it already
            _HELD[key].count += 1
            self._held = key
            return
        me = _me()
        for _ in range(10):  # rounds: only a stale lock taken over by two runs at once needs more than two
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_or_take_over(me)
                continue
            try:
                os.write(fd, json.dumps(me).encode())  # one write: a reader never sees half of it
                os.fsync(fd)
            finally:
                os.close(fd)
            holding = _HELD[key] = _Holding(created_folder=created)
            threading.Thread(target=_heartbeat, args=(self.path, holding.stop), daemon=True,
                             name="digseg-lock-heartbeat").start()
            self._held = key
            return
        raise DigsegError(f"could not take the lock {self.path}: other runs keep taking it")

    def _refuse_or_take_over(self, me: dict[str, Any]) -> None:
        """The lock file exists: a one-line DigsegError naming its holder if that run may be alive, else move the
        stale file aside (then the next O_EXCL create decides)."""
        holder = self._read_holder()
        if holder is None:  # released meanwhile
            return
        if holder.get("host") != me["host"]:
            silent = self._seconds_untouched()
            if silent < STALE_AFTER_S:
                raise DigsegError(f"run folder {self.folder} is in use by a training run on another machine "
                                  f"({describe(holder)}, last sign of life {silent:.0f} s ago); if that run has ended, "
                                  f"its lock expires {STALE_AFTER_S} s after that, or delete {self.path}")
            self._take_over(holder, f"no sign of life for {silent:.0f} s")
        elif holder.get("pid") == me["pid"] or _process_gone(int(holder.get("pid", -1))):
            self._take_over(holder, "its process is gone")
        else:
            raise DigsegError(f"run folder {self.folder} is in use by another training run ({describe(holder)}); "
                              "wait for it to end, or train into another --output")

    def _read_holder(self) -> dict[str, Any] | None:
        """The holder named in the lock file; None if the file is gone. An empty file (its creator has not
        written it yet) is read again for up to a second."""
        for _ in range(20):
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                return None
            if text.strip():
                try:
                    holder = json.loads(text)
                except ValueError:
                    break
                if isinstance(holder, dict):
                    return holder
                break
            time.sleep(0.05)
        raise DigsegError(f"run folder {self.folder} has an unreadable lock file {self.path}; delete it if no "
                          "training run uses this folder")

    def _seconds_untouched(self) -> float:
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return 0.0

    def _take_over(self, holder: dict[str, Any], why: str) -> None:
        """Move the stale lock file aside (atomic), so that the next O_EXCL create decides who gets the lock.
        If another run took it over between our read and the move, its fresh file is put back."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:  # taken over by another run meanwhile
            return
        try:
            if json.loads(aside.read_text() or "null") != holder:
                try:
                    os.link(aside, self.path)  # fails if yet another run holds it now: then that one has it
                except OSError:
                    pass
                return
        except ValueError:
            pass
        finally:
            aside.unlink(missing_ok=True)
        logger.warning("run folder %s: took over the lock of a training run that is gone (%s: %s)", self.folder,
                       describe(holder), why)

    def release(self) -> None:
        """Give the lock back; the file is removed when this process's last holder releases it."""
        key, self._held = self._held, None
        if key is None or key not in _HELD:
            return
        _HELD[key].count -= 1
        if _HELD[key].count > 0:
            return
        holding = _HELD.pop(key)
        holding.stop.set()
        try:
            holder = json.loads(key.read_text())
        except (OSError, ValueError):
            return
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            key.unlink(missing_ok=True)
            if holding.created_folder:
                try:
                    key.parent.rmdir()  # only if empty: a run refused before writing anything
                except OSError:
                    pass


@atexit.register
def _release_all() -> None:
    """A process that ends without releasing (an uncaught error in a notebook's trainer, sys.exit) frees its locks."""
    for key in list(_HELD):
        _HELD[key].count = 1
        lock = RunFolderLock(key.parent)
        lock._held = key
        lock.release()

"""One writer per run folder: a lock file in the folder, held by the main process of the run that writes there.

    with RunFolderLock(output_dir, TRAIN):      # DigsegError at once if another run holds the folder
        ...train...
    with main_process_holds(output_dir, PREDICT):   # every process of a launched run: the main one holds it
        ...predict...

Each kind of run has its own lock file: `digseg train` `.digseg-train.lock` (`TRAIN`), `digseg predict`
`.digseg-predict.lock` (`PREDICT`). Under a launcher (`accelerate launch`, `torchrun`) the processes of one run
share the lock: only the main process takes it, and `main_process_holds` tells every process of the run whether
it could, so that a refused run stops in all of them with the holder's one-line error instead of waiting at a
barrier for a main process that has gone.

The lock file holds {"host", "pid", "started"} of its holder. It is created with O_CREAT | O_EXCL, so of two
runs starting at once exactly one gets it, also on a network file system shared by several machines. It is
removed when the holder releases it (the end of the run, an error, Ctrl-C, process exit). While held, a thread
of the holder touches it every HEARTBEAT_S seconds.

A SIGKILLed or crashed run leaves its file behind. On the same host the next run finds that the pid is gone and
takes the lock over with a warning. The pid of another host cannot be checked from here: its lock is refused,
naming that host, while it shows signs of life; one untouched for STALE_AFTER_S seconds (a run killed there, a
pre-empted job requeued elsewhere) is taken over with a warning.

Within one process the lock is re-entrant (`digseg train` takes it before loading the model, the trainer again
when it is built; `digseg predict` before loading the model, `run_predict` again), so a second Trainer on the
same folder in the same Python process is not refused.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .errors import DigsegError

HEARTBEAT_S = 15  # the holder touches its lock file this often
STALE_AFTER_S = 120  # a lock of another host untouched this long is taken over (clocks of two hosts may differ a bit)


@dataclass(frozen=True)
class LockKind:
    """Whose lock: its file in the folder, how messages name the folder and the run, the logger of the take-over
    warning, and what a refused run is told to do."""

    file: str
    folder: str  # "run folder"
    run: str  # "training run"
    logger: str
    advice: str


TRAIN = LockKind(".digseg-train.lock", "run folder", "training run", "digseg.train", "train into another --output")
PREDICT = LockKind(".digseg-predict.lock", "output folder", "predict run", "digseg.predict",
                   "predict into another --output")


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
        except OSError:  # deleted by hand, or the file system is away for a moment: the holder runs on
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
    """The `kind` lock of run folder `folder` (created if missing). `acquire()` / `release()`, or a `with` block."""

    def __init__(self, folder: str | Path, kind: LockKind) -> None:
        self.folder = Path(folder)
        self.kind = kind
        self.path = self.folder / kind.file
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
        raise DigsegError(f"could not take the lock {self.path}: other {self.kind.run}s keep taking it")

    def _refuse_or_take_over(self, me: dict[str, Any]) -> None:
        """The lock file exists: a one-line DigsegError naming its holder if that run may be alive, else move the
        stale file aside (then the next O_EXCL create decides)."""
        holder = self._read_holder()
        if holder is None:  # released meanwhile
            return
        kind = self.kind
        if holder.get("host") != me["host"]:
            silent = self._seconds_untouched()
            if silent < STALE_AFTER_S:
                raise DigsegError(f"{kind.folder} {self.folder} is in use by a {kind.run} on another machine "
                                  f"({describe(holder)}, last sign of life {silent:.0f} s ago); if that run has ended, "
                                  f"its lock expires {STALE_AFTER_S} s after that, or delete {self.path}")
            self._take_over(holder, f"no sign of life for {silent:.0f} s")
        elif holder.get("pid") == me["pid"] or _process_gone(int(holder.get("pid", -1))):
            self._take_over(holder, "its process is gone")
        else:
            raise DigsegError(f"{kind.folder} {self.folder} is in use by another {kind.run} ({describe(holder)}); "
                              f"wait for it to end, or {kind.advice}")

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
        raise DigsegError(f"{self.kind.folder} {self.folder} has an unreadable lock file {self.path}; delete it if "
                          f"no {self.kind.run} uses this folder")

    def _seconds_untouched(self) -> float:
        try:
            return max(0.0, time.time() - self.path.stat().st_mtime)
        except FileNotFoundError:
            return 0.0

    def _take_over(self, holder: dict[str, Any], why: str) -> None:
        """Move the stale lock file aside (atomic), so that the next O_EXCL create decides who gets the lock.
        If another run took it over between our read and the move, its fresh file is put back."""
        aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
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
        logging.getLogger(self.kind.logger).warning("%s %s: took over the lock of a %s that is gone (%s: %s)",
                                                    self.kind.folder, self.folder, self.kind.run, describe(holder), why)

    def release(self) -> None:
        """Give the lock back; the file is removed when this process's last holder releases it."""
        key, self._held = self._held, None
        if key is not None:
            _release(key)


def _release(key: Path, every_holder: bool = False) -> None:
    """One holder (`every_holder`: all of them) of this process lets go of lock file `key`; the last removes it,
    and the folder too if taking the lock created it and the run wrote nothing there."""
    if key not in _HELD:
        return
    _HELD[key].count = 0 if every_holder else _HELD[key].count - 1
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
        _release(key, every_holder=True)


@contextlib.contextmanager
def main_process_holds(folder: str | Path, kind: LockKind) -> Iterator[None]:
    """The `kind` lock of `folder` for every process of a run, held by its main process until the block ends
    (error and Ctrl-C included). When the main process cannot take it (another run holds the folder), every
    process of the run raises the same one-line DigsegError naming the holder; none waits for the others.
    In a single process this is `with RunFolderLock(folder, kind):`."""
    from .distributed import gather_objects, process_info

    rank, world = process_info()
    lock = RunFolderLock(folder, kind)
    error: Exception | None = None
    refusal: str | None = None
    if rank == 0:
        try:
            lock.acquire()
        except Exception as exc:  # noqa: BLE001 - told to the other processes, then raised here as it is
            error, refusal = exc, str(exc) if isinstance(exc, DigsegError) else f"{kind.folder} {folder}: {exc}"
    if world > 1:  # the main process's outcome, to every process
        refusal = gather_objects([refusal] if rank == 0 else [])[0]
    if error is not None:
        raise error
    if refusal is not None:
        raise DigsegError(refusal)
    try:
        yield
    finally:
        lock.release()

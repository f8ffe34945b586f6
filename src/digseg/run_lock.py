"""One writer per output folder: an OS file lock (flock, through `filelock`) held by the main process of the run.

Each kind of run has its own lock file; its holder writes host, pid and start time into `<lock file>.json`, which a
refused run names. The kernel releases the lock when its process ends in any way, so a lock file left behind blocks
nobody. Within one process later takers of a held lock skip it (`digseg train` takes it before its Trainer would)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .errors import DigsegError


@dataclass(frozen=True)
class LockKind:
    """Whose lock: its file in the folder, how messages name the folder and the run, what a refused run should do."""

    file: str
    folder: str
    run: str
    advice: str


TRAIN = LockKind(".digseg-train.lock", "run folder", "training run", "train into another --output")
PREDICT = LockKind(".digseg-predict.lock", "output folder", "predict run", "predict into another --output")

_HELD: dict[Path, FileLock] = {}  # the lock files this process holds (a lock dropped unreleased stays held)


class RunFolderLock:
    """The `kind` lock of `folder` (created if missing): `acquire()` / `release()`, or a `with` block."""

    def __init__(self, folder: str | Path, kind: LockKind) -> None:
        self.folder, self.kind = Path(folder), kind
        self.path, self.info = self.folder / kind.file, self.folder / f"{kind.file}.json"
        self._key: Path | None = None  # the resolved lock file, while this object holds it
        self._created = False  # whether taking the lock created the folder

    def __enter__(self) -> RunFolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or a one-line DigsegError naming its holder; nothing to do if this process holds it."""
        created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if self._key is not None or key in _HELD:
            return
        lock = FileLock(key, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            holder = "holder unknown"
            for _ in range(20):  # the holder writes its record a moment after taking the lock: awaited a second
                with contextlib.suppress(OSError, ValueError):
                    record = json.loads(self.info.read_text())
                    holder = f"pid {record.get('pid')} on host {record.get('host')}, started {record.get('started')}"
                    break
                time.sleep(0.05)
            raise DigsegError(f"{self.kind.folder} {self.folder} is in use by another {self.kind.run} ({holder}); "
                              f"wait for it to end, or {self.kind.advice}") from None
        tmp = self.info.with_name(f"{self.info.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                   "started": datetime.now().astimezone().isoformat(timespec="seconds")}))
        os.replace(tmp, self.info)  # a reader sees the whole file or none
        _HELD[key], self._key, self._created = lock, key, created

    def release(self) -> None:
        """Remove the lock and info files, and the folder if taking the lock created it and it is still empty."""
        key, self._key = self._key, None
        if key is None:
            return
        lock = _HELD.pop(key)
        self.info.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)  # while still held: a run that opened this file before is refused, not let in
        lock.release()
        if self._created:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if empty: a run refused before writing anything leaves no folder


@contextlib.contextmanager
def main_process_holds(folder: str | Path, kind: LockKind) -> Iterator[None]:
    """The `kind` lock of `folder`, held by the run's main process until the block ends; when it cannot take it,
    every process raises the same one-line DigsegError (none waits at a barrier)."""
    from .distributed import gather_objects, process_info

    rank, world = process_info()
    lock, error, refusal = RunFolderLock(folder, kind), None, None
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

"""The active routing table and how it is replaced without a restart.

A reload builds and validates the whole new table first and then rebinds one attribute. That
single assignment is the swap: a request reads `store.table` once when it starts and keeps
that table to the end, so no request ever sees half of an old table and half of a new one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Callable, Optional

from pydantic import ValidationError

from proxy.metrics import ProxyMetrics
from proxy.routing import CompiledTable, describe_invalid, load_compiled

log = logging.getLogger("proxy.routes")

Signature = Optional[tuple[tuple[int, int, int], ...]]


def _signature(path: Path) -> Signature:
    """Changes whenever the table does: for a directory of shards, whenever any shard does."""
    try:
        stats = [os.stat(path)] + ([os.stat(shard) for shard in sorted(path.glob("*.yaml"))] if path.is_dir() else [])
    except OSError:
        return None
    return tuple((stat.st_mtime_ns, stat.st_size, stat.st_ino) for stat in stats)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):  # the settings' (the table's name their file already)
        return describe_invalid(exc)
    return " ".join(str(exc).split())


class RouteStore:
    def __init__(self, path: Path, metrics: ProxyMetrics, reserved_paths: frozenset[str],
                 on_swap: Callable[[CompiledTable], None] = lambda table: None):
        self.path = path
        self.table: Optional[CompiledTable] = None
        self._metrics = metrics
        self._reserved = reserved_paths
        self._on_swap = on_swap
        self._seen: Signature = None

    def reload(self, reason: str) -> bool:
        """Load the file; on any problem keep the current table and log one line."""
        # Stat before reading: a write that lands after the read changes the signature again.
        self._seen = _signature(self.path)
        try:
            table = load_compiled(self.path, self._reserved)
        except ValueError as exc:  # every problem with the file, naming it (proxy/routing.py)
            kept = "keeping the previous table" if self.table else "no table loaded yet"
            log.error("routes reload (%s) failed, %s: %s", reason, kept, describe_error(exc))
            self._metrics.reload(ok=False)
            return False
        self.table = table
        self._on_swap(table)
        self._metrics.reload(ok=True)
        self._metrics.routes_loaded.set(len(table.routes))
        log.info("routes reload (%s): %d routes from %s", reason, len(table.routes), self.path)
        return True

    async def watch(self, interval: float) -> None:
        """Poll the file's mtime/size/inode: catches edits in place and atomic renames alike."""
        while True:
            await asyncio.sleep(interval)
            if _signature(self.path) != self._seen:
                self.reload("file changed")

    def listen_for_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")

    @staticmethod
    def stop_listening(loop: asyncio.AbstractEventLoop) -> None:
        loop.remove_signal_handler(signal.SIGHUP)

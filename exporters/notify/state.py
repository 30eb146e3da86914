"""Where ``flowtel notify`` stopped: a small JSON file, replaced atomically after each delivery.

The file holds a watermark (the latest ``completed_at`` delivered) and the ids of the runs
delivered within the look-back window before it, so runs that finish with equal or slightly
out-of-order times (hosts' clocks, a spool replayed after an outage) are still sent once.
It is written to a private temporary file beside it, fsync'd and renamed over the old one,
so a crash leaves the old state or the new one, never half of either. A file that cannot be
read is an error that names it, never a silent fresh start (which would repeat or skip runs).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from exporters.errors import FlowtelError

__all__ = ["NotifyState", "StateFileError"]

_VERSION = 1


class StateFileError(FlowtelError, ValueError):
    """The state file exists but cannot be read or written; the message names it and the fix."""


class NotifyState:
    """The watermark and the recently delivered run ids, optionally kept in a file.

    Args:
        path: the state file (``None``: kept in memory only, for ``--once`` runs without one).
        start: the watermark when the file does not exist yet.
        lookback: how far before the watermark runs are still looked for.
    """

    def __init__(self, path: Path | None, *, start: dt.datetime, lookback: dt.timedelta) -> None:
        self.path = path
        self.lookback = lookback
        self.watermark = start
        self.sent: dict[str, dt.datetime] = {}
        self.undelivered: list[str] = []
        if path is not None and path.exists():
            self._load(path)

    @property
    def since(self) -> dt.datetime:
        """The earliest ``completed_at`` still looked at."""
        return self.watermark - self.lookback

    def delivered(self, run_id: str) -> bool:
        """Whether *run_id* was delivered (or given up on) already."""
        return run_id in self.sent

    def record(self, run_id: str, completed_at: dt.datetime, *, given_up: bool = False) -> None:
        """Remember *run_id* as handled and save the state (if it has a file)."""
        self.sent[run_id] = completed_at
        if given_up:
            self.undelivered.append(run_id)
            del self.undelivered[:-1000]
        self.watermark = max(self.watermark, completed_at)
        floor = self.since
        self.sent = {key: when for key, when in self.sent.items() if when >= floor}
        self.save()

    def save(self) -> None:
        """Write the state atomically (private temporary file, fsync, rename)."""
        if self.path is None:
            return
        data: dict[str, Any] = {
            "version": _VERSION,
            "watermark": self.watermark.isoformat(),
            "sent": {key: when.isoformat() for key, when in self.sent.items()},
            "undelivered": self.undelivered,
        }
        directory = self.path.parent
        try:
            handle, temporary = tempfile.mkstemp(prefix=".notify-", dir=directory)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as file:
                    json.dump(data, file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, self.path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            descriptor = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise StateFileError(
                f"cannot write the notify state file {self.path}: {exc.strerror or exc}; "
                "give a --state path in a writable directory"
            ) from exc

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != _VERSION:
                raise ValueError(f"not a version {_VERSION} notify state")
            self.watermark = _when(data["watermark"])
            self.sent = {str(k): _when(v) for k, v in dict(data.get("sent", {})).items()}
            self.undelivered = [str(v) for v in data.get("undelivered", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateFileError(
                f"cannot read the notify state file {path}: {exc}; fix or remove it "
                "(removing it starts from now, or from --since)"
            ) from exc


def _when(value: Any) -> dt.datetime:
    when = dt.datetime.fromisoformat(str(value))
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)

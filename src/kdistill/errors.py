"""The one base class for user mistakes.

A :class:`KdistillError` is something the user can fix (a path, a field, a file's content):
the command line prints its first line as ``kdistill: error: ...`` on stderr and exits 2.
Anything else is a bug or an environment failure and keeps its traceback (exit 1).

The subclasses also derive from the built-in exception the same mistake used to raise, so
``except ValueError`` in library code keeps working.
"""

from __future__ import annotations


class KdistillError(Exception):
    """A user mistake: one line naming the file or field and the fix."""


class InputError(KdistillError, ValueError):
    """Bad input: a data file, a model folder, a setting that does not fit the data."""


class MissingFileError(KdistillError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OutputError(KdistillError):
    """An output path that cannot be written: a file where a folder belongs, no permission,
    a read-only file system, a full disk, or a folder kdistill must not touch."""


class FolderBusyError(KdistillError):
    """Another live kdistill process is writing into the same folder."""


class ProvenanceError(KdistillError):
    """Teacher signals or generations made by another teacher than the run's."""


class Preempted(Exception):
    """Training stopped on a signal (SIGTERM, SIGUSR1) after saving a complete checkpoint;
    not a mistake: the command exits 128 + the signal number and resumes when re-run."""

    def __init__(self, signum: int, step: int | None, folder: str):
        import signal

        self.signum = signum
        name = signal.Signals(signum).name
        at = "" if step is None else f" at step {step}"
        super().__init__(
            f"stopped by {name}{at}; a complete checkpoint is in {folder}; run the "
            "same command again to resume"
        )

"""Exceptions raised by sanitizer.

    SanitizerError                 base of everything below
    ├── ConfigError                bad option, unknown registry name, unreadable config file
    ├── StorageError               cannot list/read/write a location; DST inside SRC
    │   └── LeaseHeld              another live run holds DST
    ├── DetectorError              model missing or unusable
    ├── ClusterError               cannot start or reach the Dask cluster
    ├── RunError                   the run finished, but its results disagree (e.g. precisions)
    └── MediaError                 one file could not be handled (becomes an audit row)
        ├── DecodeError            unreadable, truncated or unsupported input
        └── EncodeError            output could not be produced

Only `cli` turns these into one-line messages and exit codes; per-file `MediaError`s
become `failed` rows in the audit and never stop the job.
"""


class SanitizerError(Exception):
    """Base class of all sanitizer errors."""


class ConfigError(SanitizerError):
    """An option or config file is invalid."""


class StorageError(SanitizerError):
    """A storage location cannot be listed, read or written."""


class DetectorError(SanitizerError):
    """The face detector cannot be loaded or run."""


class ClusterError(SanitizerError):
    """The Dask cluster cannot be started or reached."""


class MediaError(SanitizerError):
    """One media file could not be processed."""


class DecodeError(MediaError):
    """The input could not be fully decoded."""


class EncodeError(MediaError):
    """The redacted output could not be encoded or written."""


class LeaseHeld(StorageError):
    """Another run holds DST (one run per DST at a time)."""


class RunError(SanitizerError):
    """The run went to its end, but its results are not consistent (every row is written):
    e.g. workers ran the detector at different precisions. `summary` is the run's summary."""

    def __init__(self, message: str, summary=None) -> None:
        super().__init__(message)
        self.summary = summary

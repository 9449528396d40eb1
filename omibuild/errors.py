"""One root error type. User errors carry an exit code and a one-line message; anything
else reaching the top is a bug (exit 3)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID = 1  # the input is wrong: invalid manifest, failed check, refused plan
EXIT_USAGE = 2  # bad arguments, unreadable file, unreachable service
EXIT_BUG = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended


class OmiError(Exception):
    """An error the user can fix. ``str(err)`` is the one-line message shown to them."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class UsageError(OmiError):
    exit_code = EXIT_USAGE


class SourceError(OmiError):
    """A model source could not be resolved or fetched."""

    exit_code = EXIT_USAGE


class BuildError(OmiError):
    exit_code = EXIT_INVALID


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `timeout`, Kubernetes): every verb cleans up as on Ctrl-C,
    cancelling a build, stopping containers it started, removing its temporary files."""

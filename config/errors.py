"""Every error keyflow raises, grouped by what the caller should do about it.

- :class:`RetryableError`: the same call may succeed later (throttling, connection reset). Tasks retry these.
- :class:`KeyFailedError`: this key's data or load is wrong; the key fails, other keys go on, nothing is retried.
- :class:`ConfigError`: a YAML file or profile is wrong; fix it and run again. Messages name the file and field.
"""

from __future__ import annotations

from typing import Any


class KeyflowError(Exception):
    """Base class of keyflow's own errors."""


class RetryableError(KeyflowError):
    """A transient failure (throttling, connection reset, timeout): retrying may succeed."""


class KeyFailedError(KeyflowError):
    """One key cannot be loaded as it stands (bad data, a failed load); its previous rows stay in place."""


class ReconciliationError(KeyFailedError):
    """Rows extracted, staged and loaded for a key do not agree."""

    def __init__(self, key: str, extracted: int, staged: int, loaded: int) -> None:
        self.key = key
        self.extracted = extracted
        self.staged = staged
        self.loaded = loaded
        super().__init__(
            f"key {key!r}: reconciliation failed: extracted={extracted} staged={staged} loaded={loaded}; "
            "the load was rolled back and the key's previous rows are intact"
        )


class RunFailedError(KeyflowError):
    """A run that went to its end with some keys (or files) failed: ``data`` holds every one's result row.

    A flow's Failed state carries this exception, so Prefect can raise it (a deployment run, a flow called without
    ``return_state``) while the CLI still prints every row from ``data``.
    """

    def __init__(self, message: str, data: Any) -> None:
        self.data = data
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.data)  # results are pickled: keep both arguments


class ConfigError(KeyflowError):
    """One or more problems in configuration; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PausedError(KeyflowError):
    """The flow family is paused (kill switch): the key was not started."""


def first_line(error: BaseException | str, default: str | None = None) -> str:
    """The first line of an error's message (drivers add hints and context on further lines).

    An empty message gives ``default``, else the exception's class name (``""`` for an empty string).
    """
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    if default is not None:
        return default
    return type(error).__name__ if isinstance(error, BaseException) else ""


ECHO_LIMIT = 40


def quoted(value: object, limit: int = ECHO_LIMIT) -> str:
    """A user's value as an error message quotes it: its ``repr``, cut after ``limit`` characters.

    A long value keeps its first ``limit`` characters and says how long it was, so a 10 KB key pasted by mistake
    gives a one-line error: ``'MCS2017MCS2017…'… (10,000 characters)``.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text):,} characters)"


def clip(text: str, limit: int = 200) -> str:
    """Text an error message shows as it is (a path, a driver's message), cut after ``limit`` characters."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"

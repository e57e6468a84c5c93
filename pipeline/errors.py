"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class IsovolError(Exception):
    """Base class: the message must say what is wrong and, where possible, what to do."""


class InputError(IsovolError):
    """The input volume or an argument describing it is unusable."""


class OutputError(IsovolError):
    """The destination cannot be created, written, or conflicts with an existing run."""


class ResumeError(OutputError):
    """A resumed run does not match the run recorded in the output; ``reason`` is what differs, without the
    executor's advice, for callers that advise otherwise (``isovol train``)."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


class StaleRunError(OutputError):
    """A block of a run whose output has since been deleted or replaced: it must not write there."""


def yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: what the parser expected and where (PyYAML's own text spans three)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem:
        return " ".join(str(exc).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"

"""Typed errors. Each carries the exit code a pipeline branches on.

Messages are one line: what was wrong, where, and what to do.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_GATE_FAILED = 3
EXIT_GATE_INCONCLUSIVE = 4


class SlimopsError(Exception):
    exit_code = EXIT_INTERNAL


class BadInput(SlimopsError):
    """The model, data, recipe or config given to a step is unusable."""

    exit_code = EXIT_BAD_INPUT


class GateFailed(SlimopsError):
    """The candidate did not pass its gate. The report is written before this is raised."""

    exit_code = EXIT_GATE_FAILED

    def __init__(self, message: str, report_path=None):
        super().__init__(message)
        self.report_path = report_path


class GateInconclusive(SlimopsError):
    """The gate could not decide: a speed interval straddles its threshold, or the machine was contended while
    timing. Not a verdict: runners retry the gate step later (with backoff) and never promote on it. The report
    (with the evidence) is written before this is raised."""

    exit_code = EXIT_GATE_INCONCLUSIVE

    def __init__(self, message: str, report_path=None):
        super().__init__(message)
        self.report_path = report_path

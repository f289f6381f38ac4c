"""Retrying a gate that could not decide (inconclusive, exit 4): one loop for the local runner and for
``slimops step --retry-inconclusive``, the retry inside the container for orchestrators whose retry policies
cannot see an exit code (SageMaker matches exception types; Azure ML command nodes have no retry settings)."""

from __future__ import annotations

import time
from collections.abc import Callable

from slimops.plan import Retry, StepCall

# The source job (the recipe's model as a directory) writes only its own output: retried like a transform.
SOURCE_RETRY = Retry(2, 30.0)


def run_retrying(run: Callable[[], object], waits: list[float], note: Callable[[str], None]) -> tuple[object, int]:
    """``run()`` (a step's ``core.Outcome``), run again after each of ``waits`` seconds while it is inconclusive,
    as an orchestrator's retry policy would. Returns the last outcome and the number of attempts."""
    for attempt, wait in enumerate([*waits, None], start=1):
        outcome = run()
        if outcome.status != "inconclusive" or wait is None:
            return outcome, attempt
        note(f"gate inconclusive ({'; '.join(outcome.reasons)[:300]}); attempt {attempt + 1} of {len(waits) + 1} "
             f"in {wait:g} s")
        time.sleep(wait)


def inconclusive_flags(call: StepCall) -> list[str]:
    """The ``slimops step`` options that retry ``call``'s inconclusive gate inside its own process, as the recipe's
    ``retry_inconclusive`` says; none for a step that is not a gate, or a recipe that asks for no retries."""
    retry = call.retry if call.gated else None
    if retry is None:
        return []
    return ["--retry-inconclusive", str(retry.retries), "--retry-backoff", f"{retry.backoff_s:g}",
            "--retry-factor", f"{retry.factor:g}"]

"""Canary traffic split and the SLO watch that rolls a bad challenger back on its own.

The split is deterministic (request n goes to the challenger when floor(n * p / 100) steps up), so a
10% canary gets exactly every tenth request: no random streaks, and tests can count.

Only the challenger's own served requests are watched, over a sliding time window: the error rate (model
failures, i.e. 5xx; a client's bad request is answered 4xx before routing and never counts) and the p95 of
request latency. Once the window holds ``min_requests`` and either limit is breached, the challenger's
traffic drops to 0 at once and ``on_rollback`` is called (audit entry, registry flag) off the request path.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class CanaryPolicy(BaseModel):
    """The SLO a challenger must hold while it takes canary traffic (promote's ``canary:`` config)."""

    model_config = ConfigDict(extra="forbid")

    percent: float = Field(10.0, ge=0, le=50, description="share of requests sent to the challenger (0-50)")
    window_s: float = Field(60.0, gt=0, description="sliding window the SLO is measured over, seconds")
    min_requests: int = Field(20, ge=1, description="challenger requests in the window before the SLO is judged")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="largest fraction of failed challenger requests")
    max_p95_ms: float | None = Field(None, gt=0, description="largest p95 request latency of the challenger, ms")


class CanaryMonitor:
    def __init__(self, policy: CanaryPolicy, on_rollback: Callable[[str, dict], None] | None = None):
        self.policy = policy
        self.percent = policy.percent
        self.on_rollback = on_rollback
        self.rolled_back = False
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._count = 0
        self._window: deque[tuple[float, bool, float]] = deque()
        self.served = {"champion": 0, "challenger": 0}
        self.failed = {"champion": 0, "challenger": 0}

    def choose_challenger(self) -> bool:
        with self._lock:
            if self.rolled_back or self.percent <= 0:
                return False
            n = self._count
            self._count += 1
            return int((n + 1) * self.percent // 100) > int(n * self.percent // 100)

    def record(self, role: str, ok: bool, latency_ms: float) -> None:
        fire = None
        with self._lock:
            self.served[role] += 1
            self.failed[role] += 0 if ok else 1
            if role != "challenger" or self.rolled_back:
                return
            now = time.monotonic()
            self._window.append((now, ok, latency_ms))
            while self._window and self._window[0][0] < now - self.policy.window_s:
                self._window.popleft()
            stats = self._stats()
            reason = self._breach(stats)
            if reason:
                self.rolled_back, self.percent, self.reason = True, 0.0, reason
                fire = (reason, stats)
        if fire and self.on_rollback:
            # Audit and registry writes are slow (disk, MLflow); the request that tripped the SLO does not wait.
            threading.Thread(target=self.on_rollback, args=fire, daemon=True, name="canary-rollback").start()

    def _stats(self) -> dict:
        n = len(self._window)
        if not n:
            return {"requests": 0, "error_rate": 0.0, "p95_ms": None}
        errors = sum(1 for _, ok, _ in self._window if not ok)
        p95 = float(np.percentile([ms for _, _, ms in self._window], 95))
        return {"requests": n, "error_rate": errors / n, "p95_ms": round(p95, 3)}

    def _breach(self, stats: dict) -> str | None:
        if stats["requests"] < self.policy.min_requests:
            return None
        if stats["error_rate"] > self.policy.max_error_rate:
            return (f"challenger error rate {stats['error_rate']:.1%} over {stats['requests']} requests is above "
                    f"the SLO's {self.policy.max_error_rate:.1%}")
        if self.policy.max_p95_ms is not None and stats["p95_ms"] > self.policy.max_p95_ms:
            return (f"challenger p95 latency {stats['p95_ms']:.3f} ms over {stats['requests']} requests is above "
                    f"the SLO's {self.policy.max_p95_ms:g} ms")
        return None

    def status(self) -> dict:
        with self._lock:
            return {"percent": self.percent, "policy": self.policy.model_dump(), "rolled_back": self.rolled_back,
                    "reason": self.reason, "window": self._stats(), "served": dict(self.served),
                    "failed": dict(self.failed)}

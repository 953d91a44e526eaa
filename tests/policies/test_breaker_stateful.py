"""Hypothesis drives the breaker with random calls, outcomes and time, against a model."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from stalwart._clock import FakeClock
from stalwart.errors import CircuitOpenError
from stalwart.policies import BreakerState, BreakerTransition, CircuitBreaker, CircuitBreakerConfig

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN
LEGAL = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)}
SLOW_AFTER = 1.0


class Ignored(Exception):
    """An error the breaker ignores."""


class Model:
    """resilience4j's rules written plainly over a list of outcomes."""

    def __init__(self, config: CircuitBreakerConfig) -> None:
        self.config = config
        self.state = CLOSED
        self.outcomes: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
        self.open_until = 0.0
        self.permits = 0

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        size = self.config.window_size
        if self.state is HALF_OPEN:
            return self.outcomes[-self.config.permitted_calls_in_half_open:]
        if self.config.window_type == "count":
            return self.outcomes[-size:]
        return [o for o in self.outcomes if math.floor(o[0]) > math.floor(now) - size]

    def minimum(self) -> int:
        if self.state is HALF_OPEN:
            return min(self.config.minimum_calls, self.config.permitted_calls_in_half_open)
        if self.config.window_type == "count":
            return min(self.config.minimum_calls, self.config.window_size)
        return self.config.minimum_calls

    def rates(self, now: float) -> tuple[float | None, float | None]:
        window = self.window(now)
        if not window or len(window) < self.minimum():
            return None, None
        failed = sum(1 for o in window if o[1])
        slow = sum(1 for o in window if o[2])
        return failed * 100.0 / len(window), slow * 100.0 / len(window)

    def acquire(self, now: float) -> bool:
        if self.state is OPEN and now >= self.open_until:
            self.state, self.outcomes = HALF_OPEN, []
            self.permits = self.config.permitted_calls_in_half_open
        if self.state is CLOSED:
            return True
        if self.state is HALF_OPEN and self.permits > 0:
            self.permits -= 1
            return True
        return False

    def record(self, failed: bool, duration: float, now: float) -> None:
        self.outcomes.append((now, failed, duration > SLOW_AFTER))
        if self.state is OPEN:
            return
        failure, slow = self.rates(now)
        if failure is None or slow is None:
            return
        if (failure >= self.config.failure_rate_threshold
                or slow >= self.config.slow_call_rate_threshold):
            self.state = OPEN
            wait = self.config.wait_in_open
            assert isinstance(wait, float)
            self.open_until = now + wait
        elif self.state is HALF_OPEN:
            self.state, self.outcomes = CLOSED, []

    def release(self) -> None:
        if self.state is HALF_OPEN:
            self.permits = min(self.permits + 1, self.config.permitted_calls_in_half_open)


configs = st.builds(
    CircuitBreakerConfig,
    window_type=st.sampled_from(["count", "time"]),
    window_size=st.integers(1, 6),
    minimum_calls=st.integers(1, 6),
    failure_rate_threshold=st.sampled_from([25.0, 50.0, 75.0, 100.0]),
    slow_call_rate_threshold=st.sampled_from([34.0, 50.0, 100.0]),
    slow_call_duration=st.just(SLOW_AFTER),
    wait_in_open=st.sampled_from([1.0, 5.0]),
    permitted_calls_in_half_open=st.integers(1, 4),
    ignore=st.just(lambda e: isinstance(e, Ignored)),
)


class BreakerMachine(RuleBasedStateMachine):
    """Random traffic through one breaker, checked step by step against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=0.0)
        self.transitions: list[BreakerTransition] = []
        self.in_flight = 0

    @initialize(config=configs)
    def setup(self, config: CircuitBreakerConfig) -> None:
        self.breaker = CircuitBreaker(config, clock=self.clock, key="k")
        self.breaker.add_listener(self.transitions.append)
        self.model = Model(config)

    @rule()
    def acquire(self) -> None:
        now = self.clock.monotonic()
        allowed = self.model.acquire(now)
        rejection: CircuitOpenError | None = None
        try:
            self.breaker.acquire()
        except CircuitOpenError as error:
            rejection = error
        assert (rejection is None) == allowed
        if rejection is None:
            self.in_flight += 1
            return
        assert rejection.retryable  # after retry_after: Retry waits for the trial call
        if rejection.state == "open":
            wait = self.model.config.wait_in_open
            assert isinstance(wait, float)
            assert rejection.retry_after is not None
            assert 0 < rejection.retry_after <= wait

    @precondition(lambda self: self.in_flight > 0)
    @rule(
        outcome=st.sampled_from(["success", "failure", "ignored", "cancelled"]),
        duration=st.sampled_from([0.0, 0.5, 1.0, 1.5, 3.0]),
    )
    def complete(self, outcome: str, duration: float) -> None:
        self.in_flight -= 1
        now = self.clock.monotonic()
        before = self.breaker.state
        if outcome == "success":
            self.breaker.on_success(duration)
            self.model.record(False, duration, now)
        elif outcome == "failure":
            self.breaker.on_error(duration, RuntimeError("boom"))
            self.model.record(True, duration, now)
        elif outcome == "ignored":
            self.breaker.on_error(duration, Ignored())
            self.model.release()
        else:
            self.breaker.release()
            self.model.release()
        stats = self.breaker.statistics()
        if self.breaker.state is CLOSED and before is CLOSED and outcome in ("success", "failure"):
            # a judged CLOSED window is always below both thresholds
            config = self.model.config
            if stats.failure_rate is not None:
                assert stats.failure_rate < config.failure_rate_threshold
            if stats.slow_call_rate is not None:
                assert stats.slow_call_rate < config.slow_call_rate_threshold

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5, 5.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance_sync(seconds)

    @invariant()
    def agrees_with_the_model(self) -> None:
        if not hasattr(self, "breaker"):
            return
        now = self.clock.monotonic()
        stats = self.breaker.statistics()
        assert stats.state is self.model.state
        window = self.model.window(now)
        if self.model.state is not OPEN:
            assert stats.calls_in_window == len(window)
            assert stats.failed_calls == sum(1 for o in window if o[1])
            assert stats.slow_calls == sum(1 for o in window if o[2])
            assert (stats.failure_rate, stats.slow_call_rate) == self.model.rates(now)
        if stats.state is HALF_OPEN:
            assert stats.half_open_permits_left == self.model.permits
            assert 0 <= self.model.permits <= self.model.config.permitted_calls_in_half_open
        if self.model.config.window_type == "count":
            config = self.model.config
            assert stats.calls_in_window <= max(config.window_size,
                                                config.permitted_calls_in_half_open)

    @invariant()
    def transitions_are_legal(self) -> None:
        previous = CLOSED
        for event in self.transitions:
            assert event.from_state is previous
            assert (event.from_state, event.to_state) in LEGAL
            previous = event.to_state


BreakerMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=60,
                                            deadline=None)
TestBreakerStateMachine = BreakerMachine.TestCase

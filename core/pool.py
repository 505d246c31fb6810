"""The models of one batch at run time: rate limiters, token calibration,
load, and which models are usable now.

A 429 cools down that model alone; an auth or quota error takes it out of the
batch. Routing strategies only ever see the usable ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import trio

from .budget import Budget
from .errors import ErrorKind
from .ratelimit import RateLimiter
from .sharedlimits import SharedRate
from .settings import ModelSpec
from .tokens import TokenCalibrator


@dataclass
class ModelState:
    spec: ModelSpec
    limiter: RateLimiter
    calibrator: TokenCalibrator = field(default_factory=TokenCalibrator)
    in_flight: int = 0  # requests sent, reply not yet in
    reserved: int = 0  # routed here, waiting for budget or the rate limiter
    reserved_tokens: int = 0  # the rate-limit tokens of the reserved ones
    #: Attempts waiting for their turn outside the rate limiter (where they may
    #: still move to another model), in the order they came: ticket -> tokens.
    line: dict[object, int] = field(default_factory=dict)
    #: (error kind, message) once the model is taken out of the batch.
    disabled: tuple[ErrorKind, str] | None = None
    #: The model's ``max_spend_usd`` over the store's spend on it; None without a cap.
    spend: Budget | None = None

    @property
    def capacity(self) -> int:
        return self.spec.max_parallel or 0

    def queue_wait(self, tokens: int) -> float:
        """Seconds until the rate limiter could send one more request of
        ``tokens`` behind every attempt routed here and not sent yet (those in
        the limiter's queue are counted by the limiter, the rest added)."""
        limiter = self.limiter
        return limiter.wait_after(tokens, self.reserved - limiter.waiting, self.reserved_tokens - limiter.waiting_tokens)


class NoModelLeft(Exception):
    """Every model of the batch was taken out (auth or quota errors)."""


class ModelPool:
    def __init__(self, specs: dict[str, ModelSpec]) -> None:
        self.models = {
            name: ModelState(spec, RateLimiter(spec.rpm, spec.tpm)) for name, spec in specs.items()
        }
        self._changed = trio.Event()

    def __getitem__(self, name: str) -> ModelState:
        return self.models[name]

    def usable(self, candidates: list[str]) -> list[str]:
        """Candidates neither taken out nor cooling down after a 429."""
        now = trio.current_time()
        return [n for n in candidates if not self.models[n].disabled and self.models[n].limiter.cooling_until <= now]

    async def wait_for_usable(self, candidates: list[str]) -> list[str]:
        """The usable candidates, waiting for the earliest cool-down to end if
        there are none. Raises NoModelLeft if none can ever come back."""
        while True:
            usable = self.usable(candidates)
            if usable:
                return usable
            alive = [self.models[n] for n in candidates if not self.models[n].disabled]
            if not alive:
                raise NoModelLeft("; ".join(f"{n}: {self.models[n].disabled[1]}" for n in candidates))
            changed = self._changed
            with trio.move_on_at(min(m.limiter.cooling_until for m in alive)):
                await changed.wait()

    def share(self, store: object, spawn: Callable[..., object]) -> int:
        """Link each model with an rpm or tpm to the store's shared limits
        (the store offers them); returns how many. Models with neither never
        touch the store (their 429 cool-downs stay in this process)."""
        shared = 0
        for name, state in self.models.items():
            if state.spec.rpm or state.spec.tpm:
                state.limiter.share(SharedRate(store, name, state.limiter, spawn))
                shared += 1
        return shared

    def cap_spend(self, spent_by_model: dict[str, float]) -> None:
        """Give each model with a ``max_spend_usd`` its budget, starting from
        what the store has spent on it; a model already at its cap is out."""
        for name, state in self.models.items():
            cap = state.spec.max_spend_usd
            if cap is None:
                continue
            state.spend = Budget(cap, spent_by_model.get(name, 0.0))
            if state.spend.spent >= cap:
                self.disable(name, ErrorKind.QUOTA_EXCEEDED, spend_cap_reached(name, state.spend))

    def disable(self, name: str, kind: ErrorKind, reason: str) -> bool:
        """Take a model out of the batch; False if it already was."""
        state = self.models[name]
        if state.disabled:
            return False
        state.disabled = (kind, reason)
        self._wake()
        return True

    def cool_down(self, name: str, seconds: float) -> None:
        self.models[name].limiter.cool_down(seconds)
        self._wake()

    @property
    def changed(self) -> trio.Event:
        """Set at the next change: a model cooled down or taken out, or an
        attempt leaving a model's line for another model."""
        return self._changed

    def wake(self) -> None:
        """Tell waiters something changed (an attempt left a model's line)."""
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()



def spend_cap_reached(name: str, spend: Budget) -> str:
    return f"model {name!r} reached its max_spend_usd (${spend.limit:g}; ${spend.spent:.4f} spent)"

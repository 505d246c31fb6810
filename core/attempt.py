"""One attempt at one item: route, reserve budget, respect the model's rate
limit, call the provider under ``trio.fail_after``, and say how it ended.

The order matters: an item first waits for a usable model, then for budget,
then for the model's rate limit; ``timeout_per_item`` covers only the
provider call, so waiting for a limit is never mistaken for a slow reply.
With a strategy that can ``reconsider`` (least_loaded), a long rate-limit
wait is spent first in the model's line, outside the limiter and not yet
recorded as sent, from where the attempt may move to a model that frees up
sooner (docs/routing.md).
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from typing import TYPE_CHECKING, Any

import trio

from .clock import wall
from .budget import worst_case
from .contracts import Outcome, Stop
from .errors import ErrorKind, ProviderError
from .events import Event
from .job import Item
from .jobtype import event_fields
from .pool import NoModelLeft, spend_cap_reached
from .provider import Request, well_formed
from .routing import AttrMap, Choice, LazyMap, RouteContext
from .store import ClaimedItem, StartRecord, StoreUnavailable
from .tokens import estimate_request_tokens

if TYPE_CHECKING:
    from .roles import AttemptBatch as Batch

class NotStarted(Exception):
    """The attempt's start did not apply (its item was cancelled, or taken by
    another worker): nothing was sent or recorded; the item is released."""


#: A reply cut off at max_tokens is retried with max_tokens times this.
MORE_ROOM = 2
#: Errors that take a model out of the batch rather than fail the item.
MODEL_ERRORS = (ErrorKind.AUTH_ERROR, ErrorKind.QUOTA_EXCEEDED)
#: An attempt its model's rate limiter would hold longer than this waits for
#: its turn outside the limiter, where the strategy may still move it to a
#: model that frees up sooner; it is recorded as sent and joins the limiter's
#: queue this long before its turn, so that commit is not on the request's way.
TURN_LEAD = 0.5
#: How often an attempt waiting for its turn asks the strategy again, besides
#: the pool's changes (a 429, a model taken out, an attempt moving away).
RECHECK = 0.25
#: Most moves of one attempt: a strategy that keeps changing its mind cannot hold it forever.
MAX_MOVES = 8


async def run_attempt(batch: "Batch", claimed: ClaimedItem, item: Item) -> Outcome:
    """Run one attempt. Raises :class:`Stop` when the batch must pause first,
    :class:`NotStarted` when its start did not apply (nothing was sent)."""
    job, plan, pool = batch.job, batch.plan, batch.pool
    attempt = claimed.attempts + 1
    t0 = trio.current_time()
    model: str | None = None
    route: dict[str, Any] = {}
    reserved: float | None = None
    model_reserved: float | None = None
    cost = 0.0
    response = None
    sent: float | None = None  # the worst case, once the request is on its way
    unknown = False  # sent, and no usage came back: the worst case is charged
    try:
        performed = _perform(batch, item, attempt, t0)
        if performed is not None:
            return performed
        request = _request(batch, claimed, item, attempt)
        candidates = [item.model] if item.model else list(plan.models)
        estimated_prompt = estimate_request_tokens(request)
        moved: Choice | None = None  # another model the strategy moved this attempt to
        left: list[str] = []  # the models it left while waiting for its turn
        while True:
            try:
                usable = await pool.wait_for_usable(candidates)
            except NoModelLeft as exc:
                # None of the item's models can ever come back in this run: the
                # item fails with the reason; the failure policy pauses the job
                # if this happens to most of its items.
                kind = pool[candidates[0]].disabled[0]
                return Outcome(state="failed", attempt=attempt, model=None, elapsed=trio.current_time() - t0,
                               error_kind=kind, error=f"no model left: {exc}", free=True)
            if moved is not None and moved.model in usable:
                model, route = moved.model, {**moved.reason, "usable": usable}
            else:
                model, route = _route(batch, item, claimed, usable, request, estimated_prompt)
            if left:
                route["moved_from"] = list(left)
            moved = None
            state = pool[model]
            spec = state.spec
            prompt = state.calibrator.apply(estimated_prompt)
            tpm_cost = prompt + request.max_tokens
            worst = worst_case(spec.price, prompt, request.max_tokens)
            if state.spend is not None:
                # The model's own cap: when it cannot cover this attempt, the
                # model is out and another one takes the item (a free attempt).
                if not state.spend.try_reserve(worst):
                    raise ProviderError(ErrorKind.QUOTA_EXCEEDED, spend_cap_reached(model, state.spend))
                model_reserved = worst
            # Load-based strategies count an attempt from the moment it is routed:
            # "reserved" until it may send, then "in flight" until the reply is in.
            # No checkpoint between routing and counting, so concurrent routes see it.
            state.reserved += 1
            state.reserved_tokens += tpm_cost
            # In the model's line from now until it joins the limiter's queue, so
            # that those routed after it count it ahead of them all the way.
            ticket = object()
            state.line[ticket] = tpm_cost
            try:
                if not await batch.budget.reserve(worst):
                    raise Stop(batch.budget.reached(worst))
                reserved = worst
                if len(candidates) > 1 and len(left) < MAX_MOVES and hasattr(batch.strategy, "reconsider"):
                    moved = await _wait_turn(batch, item, claimed, candidates, model, request, estimated_prompt,
                                             ticket)
                if moved is None:
                    # On disk before the request goes: a kill after it leaves "sent, outcome
                    # unknown". Recorded before the rate-limit wait, not after it, so that the
                    # request leaves the moment the limiter lets it: a commit between the two
                    # would send requests late and bunched, past the bucket the limiter kept.
                    if not await batch.started(StartRecord(job.job_id, item.item_id, model, wall(),
                                                           attempt=attempt, reserved_usd=worst,
                                                           fence=claimed.fence)):
                        raise NotStarted(item.item_id)  # cancelled or taken elsewhere: sending would bill an unrecorded attempt
                    sent = worst
                    del state.line[ticket]  # no checkpoint before the limiter counts it
                    await state.limiter.acquire(tpm_cost)
            finally:
                state.reserved -= 1
                state.reserved_tokens -= tpm_cost
                state.line.pop(ticket, None)
            if moved is None:
                break
            # Moving on before anything was sent: give back what this model held.
            held, reserved = reserved, None
            await batch.budget.asettle(held, 0.0)
            if model_reserved is not None:
                state.spend.settle(model_reserved, 0.0)
                model_reserved = None
            left.append(model)
            pool.wake()  # those behind it in the line move up
        state.in_flight += 1
        try:
            batch.hooks.item_started(job=job, item=item, attempt=attempt, model=model)
            # Besides the generic keys, the item fields its job type names (chapter_num, say).
            shown = {name: item.fields.get(name) for name in event_fields(batch.job_type)}
            batch.emit(Event("item_started", job.job_id, item.item_id, data={
                "attempt": attempt, "model": model, "project_id": item.project_id, **shown}))
            with trio.fail_after(plan.timeout_per_item):
                response = await batch.providers[model].complete(request)
        except trio.TooSlowError:
            raise ProviderError(ErrorKind.TIMEOUT,
                                f"no reply within timeout_per_item ({plan.timeout_per_item:g}s)") from None
        finally:
            state.in_flight -= 1
        response = well_formed(response)  # a model's text is data; half a surrogate pair must not crash the store
        state.limiter.reconcile(tpm_cost, response.input_tokens + response.output_tokens)
        state.calibrator.observe(estimated_prompt, response.input_tokens)
        cost = spec.price.cost(response.input_tokens, response.output_tokens)
        result = batch.job_type.handle_result(item, job, response)
        return Outcome(state="completed", attempt=attempt, model=model, elapsed=trio.current_time() - t0,
                       input_tokens=response.input_tokens, output_tokens=response.output_tokens,
                       cost_usd=cost, result=result, route=route, sent_worst_usd=sent)
    except ProviderError as exc:
        if response is not None and not (exc.input_tokens or exc.output_tokens):
            exc.input_tokens, exc.output_tokens = response.input_tokens, response.output_tokens
        if model is not None:
            cost = pool[model].spec.price.cost(exc.input_tokens, exc.output_tokens)
        # Sent, and no usage back (a timeout, a dropped connection): billed or
        # not, count the worst case, unless the provider says it surely was not.
        unknown = (sent is not None and response is None and not (exc.input_tokens or exc.output_tokens)
                   and exc.billed is not False)
        return _failure(batch, exc, claimed, attempt, model, t0, route, cost, sent, unknown)
    except (Stop, NotStarted, StoreUnavailable):  # the store's fault stops the worker (exit 5), as anywhere
        raise
    except Exception as exc:  # a plugin bug must not take the batch down
        traceback.print_exc(file=sys.stderr)
        error = ProviderError(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        unknown = sent is not None and response is None
        return _failure(batch, error, claimed, attempt, model, t0, route, cost, sent, unknown)
    except BaseException:
        # Cancelled mid-request: the store keeps its row "sent, outcome unknown"; the budget agrees.
        unknown = sent is not None and response is None
        raise
    finally:
        charged = worst if unknown else cost
        if reserved is not None:
            with trio.CancelScope(shield=True):  # a shared budget's settle is a store write
                await batch.budget.asettle(reserved, charged)
        if model_reserved is not None:
            pool[model].spend.settle(model_reserved, charged)


def _perform(batch: "Batch", item: Item, attempt: int, t0: float) -> Outcome | None:
    """The attempt of a job type that does the item's work in code (an
    optional ``perform(item, job) -> Result | None``; None: ask a model as
    usual): no model, no budget, no rate limit, nothing sent, so nothing to
    record before it. A ProviderError it raises fails the attempt like a
    provider's would (the retry policy decides)."""
    perform = getattr(batch.job_type, "perform", None)
    if perform is None:
        return None
    result = perform(item, batch.job)
    if result is None:
        return None
    return Outcome(state="completed", attempt=attempt, model=None, elapsed=trio.current_time() - t0, result=result)


def _request(batch: "Batch", claimed: ClaimedItem, item: Item, attempt: int) -> Request:
    job = batch.job
    request = batch.job_type.build_request(item, job)
    language = item.fields.get("language") or job.language
    for key, value in (("job_id", job.job_id), ("item_id", item.item_id), ("attempt", attempt),
                       ("language", language)):
        request.metadata.setdefault(key, value)  # what the job type set wins
    if claimed.last_error_kind == ErrorKind.OUTPUT_TRUNCATED:
        request = dataclasses.replace(request, max_tokens=request.max_tokens * MORE_ROOM)
    if job.config.stream and not request.stream:
        request = dataclasses.replace(request, stream=True)
    return request


def _route(batch: "Batch", item: Item, claimed: ClaimedItem, usable: list[str], request: Request,
           estimated_prompt: int) -> tuple[str, dict[str, Any]]:
    if batch.job.config.model_rotation and claimed.last_model in usable and len(usable) > 1:
        usable = [m for m in usable if m != claimed.last_model]
    ctx = _context(batch, claimed, usable, request, estimated_prompt)
    choice = batch.strategy.choose(item, ctx)
    if choice.model not in usable:
        raise ProviderError(ErrorKind.INTERNAL_ERROR,
                            f"routing strategy chose {choice.model!r}, which is not usable ({', '.join(usable)})")
    return choice.model, {**choice.reason, "usable": usable}


def _context(batch: "Batch", claimed: ClaimedItem, usable: list[str], request: Request,
             estimated_prompt: int) -> RouteContext:
    models = batch.pool.models
    max_tokens = request.max_tokens
    # Lazy: each value is computed when a strategy first reads it.
    prompt = LazyMap(usable, lambda m: models[m].calibrator.apply(estimated_prompt))

    return RouteContext(
        usable=usable, attempt=claimed.attempts, previous_model=claimed.last_model,
        in_flight=AttrMap(models, "in_flight"), capacity=AttrMap(models, "capacity"),
        reserved=AttrMap(models, "reserved"),
        rate_wait=LazyMap(usable, lambda m: models[m].limiter.wait_time(prompt[m] + max_tokens)),
        queue_wait=LazyMap(usable, lambda m: models[m].queue_wait(prompt[m] + max_tokens)),
        rate=LazyMap(usable, lambda m: models[m].limiter.requests_per_second(prompt[m] + max_tokens)),
        prices=LazyMap(usable, lambda m: models[m].spec.price),
        prompt_tokens=prompt,
        output_tokens=LazyMap(usable, lambda m: max_tokens),
    )


async def _wait_turn(batch: "Batch", item: Item, claimed: ClaimedItem, candidates: list[str], model: str,
                     request: Request, estimated_prompt: int, ticket: object) -> Choice | None:
    """Wait, outside the model's rate limiter, until this attempt's turn is at
    most :data:`TURN_LEAD` away; meanwhile, whenever something changes (and
    every :data:`RECHECK` s), ask the strategy's ``reconsider`` whether another
    usable model would take it sooner. The strategy's choice to move, or None
    once it is this attempt's turn here. Waiting here holds no other model's
    room: an attempt routed to a slow model does not sit in its queue while
    another could send it now."""
    pool = batch.pool
    state = pool[model]
    limiter = state.limiter
    tokens = state.line[ticket]
    while True:
        ahead = ahead_tokens = 0
        for other, cost in state.line.items():
            if other is ticket:
                break
            ahead += 1
            ahead_tokens += cost
        wait = limiter.wait_after(tokens, ahead, ahead_tokens)
        if wait <= TURN_LEAD:
            return None
        usable = [m for m in pool.usable(candidates) if m != model]
        if batch.job.config.model_rotation and claimed.last_model in usable and len(usable) > 1:
            usable = [m for m in usable if m != claimed.last_model]
        if usable:
            ctx = _context(batch, claimed, [model, *usable], request, estimated_prompt)
            choice = batch.strategy.reconsider(item, ctx, model, wait)
            if choice is not None and choice.model != model:
                if choice.model not in usable:
                    raise ProviderError(ErrorKind.INTERNAL_ERROR, f"routing strategy moved an attempt to "
                                        f"{choice.model!r}, which is not usable ({', '.join(usable)})")
                return choice
        changed = pool.changed
        with trio.move_on_after(min(wait - TURN_LEAD, RECHECK)):
            await changed.wait()


def _failure(batch: "Batch", exc: ProviderError, claimed: ClaimedItem, attempt: int, model: str | None,
             t0: float, route: dict[str, Any], cost: float, sent: float | None = None,
             unknown: bool = False) -> Outcome:
    if exc.raw is not None:
        # The server's own answer, kept with the item (its route) for a job
        # type that hands replies on as they came (a Batch API error line).
        route = {**route, "reply": exc.raw.as_dict()}
    common = dict(attempt=attempt, model=model, elapsed=trio.current_time() - t0, input_tokens=exc.input_tokens,
                  output_tokens=exc.output_tokens, cost_usd=cost, error_kind=exc.kind, route=route,
                  sent_worst_usd=sent, usage_unknown=unknown)
    another_model_free = False
    if model is not None and exc.kind is ErrorKind.API_RATE_LIMIT:
        batch.pool.cool_down(model, exc.retry_after if exc.retry_after is not None else 1.0)
        # The cool-down keeps this model out; another usable one can take the item now.
        pinned = claimed.definition.get("model")
        another_model_free = not pinned and bool(
            batch.pool.usable([m for m in batch.plan.models if m != model]))
    if model is not None and exc.kind in MODEL_ERRORS:
        # The key or the account is the problem, not the item: take the model
        # out of the batch and let the item try another one.
        if batch.pool.disable(model, exc.kind, exc.message):
            batch.control.escalate(f"model {model!r} taken out of the batch: {exc}", model=model,
                                   error_kind=str(exc.kind))
        return Outcome(state="retrying", error=exc.message, retry_delay=0.0, free=True, **common)
    elapsed = wall() - (claimed.first_started_at or wall())
    counted = attempt - claimed.free_attempts
    decision = batch.policy.decide(exc, counted, batch.plan.max_retries, elapsed)
    message = exc.message if decision.retry or not decision.reason else f"{exc.message} ({decision.reason})"
    delay = (0.0 if another_model_free else decision.delay) if decision.retry else None
    return Outcome(state="retrying" if decision.retry else "failed", error=message, retry_delay=delay,
                   free=exc.kind is ErrorKind.API_RATE_LIMIT, **common)

"""A run id is an idempotency key, as Stripe's keys are: the same id with the same input
returns the existing run, with other input it is an IdempotencyConflictError naming both
inputs' hashes, unless ``if_exists="return"``. On every backend (see ``conftest.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

import stalwart as sw
from stalwart._serde import input_hash
from stalwart.store import Store
from stalwart.testing import MemoryStore

Factory = Callable[[], sw.Runtime]


@pytest.fixture
async def runtimes(store_location: tuple[str, str]) -> AsyncIterator[Factory]:
    """Client runtimes (they execute nothing) on the test's journal, closed after it."""
    backend, where = store_location
    shared = MemoryStore()
    made: list[sw.Runtime] = []

    def factory() -> sw.Runtime:
        store: Store | str = shared if backend == "memory" else where
        rt = sw.Runtime(store, worker=False)
        made.append(rt)
        return rt

    yield factory
    for rt in made:
        await rt.close()


def workflows(rt: sw.Runtime) -> tuple[sw.Workflow[..., None], sw.Workflow[..., None]]:
    @rt.workflow(name="order")
    async def order(ctx: sw.Context, item: str, options: dict[str, int]) -> None: ...

    @rt.workflow(name="refund")
    async def refund(ctx: sw.Context, item: str, options: dict[str, int]) -> None: ...

    return order, refund  # type: ignore[return-value]


async def test_the_same_id_and_input_return_the_existing_run(runtimes: Factory) -> None:
    """Same id, same input (key order aside): the existing run, created=False."""
    rt = runtimes()
    order, _ = workflows(rt)
    first = await rt.start(order, "book", {"a": 1, "b": 2}, run_id="order-42")
    again = await rt.start(order, "book", {"b": 2, "a": 1}, run_id="order-42")
    assert first.created and not again.created
    assert again.run_id == "order-42"
    assert len(await rt.list_runs()) == 1


async def test_the_same_id_with_other_input_is_a_conflict(runtimes: Factory) -> None:
    """Other input: IdempotencyConflictError with both hashes; nothing is written."""
    rt = runtimes()
    order, _ = workflows(rt)
    await rt.start(order, "book", {"a": 1}, run_id="order-42")
    events = await rt.events("order-42")
    existing = (await rt.get_run("order-42")).input
    with pytest.raises(sw.IdempotencyConflictError) as info:
        await rt.start(order, "pen", {"a": 1}, run_id="order-42")
    err = info.value
    assert isinstance(err, sw.ConfigurationError)
    assert err.run_id == "order-42" and err.workflow == "order"
    assert err.existing_input_hash == input_hash(existing)
    assert err.input_hash == input_hash(order.encode_input(("pen", {"a": 1}), {}))
    assert err.existing_input_hash != err.input_hash
    assert err.existing_input_hash[:12] in str(err) and err.input_hash[:12] in str(err)
    assert await rt.events("order-42") == events
    assert (await rt.get_run("order-42")).input == existing


async def test_if_exists_return_returns_the_run_whatever_its_input(runtimes: Factory) -> None:
    """if_exists="return": the existing run, as before this check existed."""
    rt = runtimes()
    order, _ = workflows(rt)
    await rt.start(order, "book", {}, run_id="order-42")
    again = await rt.start(order, "pen", {}, run_id="order-42", if_exists="return")
    assert not again.created
    assert "book" in (await rt.get_run("order-42")).input


async def test_an_id_used_by_another_workflow_is_always_a_conflict(runtimes: Factory) -> None:
    """The same id for another workflow is refused, even with if_exists="return"."""
    rt = runtimes()
    order, refund = workflows(rt)
    await rt.start(order, "book", {}, run_id="order-42")
    for if_exists in ("compare", "return"):
        with pytest.raises(sw.IdempotencyConflictError, match="workflow 'order'"):
            await rt.start(refund, "book", {}, run_id="order-42",
                           if_exists=if_exists)  # type: ignore[arg-type]


async def test_racing_starts_with_different_inputs_create_one_run(runtimes: Factory) -> None:
    """Two runtimes start the same id at once with different inputs: one creates the
    run, the other gets the conflict (the store answers with the run that won)."""
    one, two = runtimes(), runtimes()
    wf_one, _ = workflows(one)
    wf_two, _ = workflows(two)
    results = await asyncio.gather(
        one.start(wf_one, "book", {}, run_id="race"),
        two.start(wf_two, "pen", {}, run_id="race"), return_exceptions=True)
    created = [r for r in results if isinstance(r, sw.RunHandle)]
    refused = [r for r in results if isinstance(r, sw.IdempotencyConflictError)]
    assert len(created) == 1 and created[0].created and len(refused) == 1, results
    assert len(await one.list_runs()) == 1


async def test_if_exists_takes_only_its_two_values(runtimes: Factory) -> None:
    """A misspelt if_exists is a ConfigurationError, not a silent default."""
    rt = runtimes()
    order, _ = workflows(rt)
    with pytest.raises(sw.ConfigurationError, match="if_exists"):
        await rt.start(order, "book", {}, run_id="x", if_exists="ignore")  # type: ignore[arg-type]

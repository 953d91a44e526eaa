"""A saga: book a trip, and undo the bookings, in reverse, when a later step fails.

Each booking is a journaled step that names its compensation. When the car rental is
sold out, the hotel and then the flight are cancelled, each cancellation a durable tool
call with its own idempotency key and retries; the run then fails with the rental's
error, which the workflow reports. A second trip goes through: the payment is the
saga's pivot (its point of no return), and the confirmation after it is never undone.

    python examples/saga_booking.py
"""

from __future__ import annotations

import asyncio

import stalwart as sw

app = sw.Runtime()  # the journal: ./.stalwart/stalwart.db (or $STALWART_STORE)

bookings: dict[str, str] = {}  # the travel agency's side


def book(kind: str, city: str) -> str:
    if kind == "car" and city == "Lisbon":
        raise LookupError(f"no cars left in {city}")
    ref = f"{kind}-{city}".lower()
    bookings[ref] = sw.current_step().idempotency_key  # the agency deduplicates on it
    return ref


@app.tool
def cancel(ref: str, call: sw.ToolCall) -> str:
    """Cancel a booking (idempotent at the agency: keyed by the call's key)."""
    bookings.pop(ref, None)
    return f"cancelled {ref}"


def charge(city: str) -> str:
    return f"paid for {city}"


def confirm(city: str) -> str:
    return f"confirmation sent for {city}"


@app.workflow
async def trip(ctx: sw.Context, city: str) -> str:
    try:
        async with ctx.saga() as saga:
            flight = await saga.step(book, "flight", city, name="book flight",
                                     compensate=cancel)
            hotel = await saga.step(book, "hotel", city, name="book hotel",
                                    compensate=cancel)
            car = await saga.step(book, "car", city, name="book car", compensate=cancel)
            await saga.pivot(charge, city)     # after this, nothing is undone
            await saga.step(confirm, city)     # retried forward if it fails
            return f"{city}: booked {flight}, {hotel}, {car}"
    except LookupError as exc:
        return f"{city}: rolled back ({exc}); still booked: {sorted(bookings) or 'nothing'}"


async def main() -> None:
    async with app:
        for city in ("Lisbon", "Oslo"):
            handle = await app.start(trip, city)
            print(await handle.result())
            steps = [e.name for e in await app.events(handle.run_id)
                     if e.kind == "step_completed" and not (e.name or "").startswith(
                         "stalwart.")]
            print(f"  steps: {', '.join(n or '?' for n in steps)}")


if __name__ == "__main__":
    asyncio.run(main())

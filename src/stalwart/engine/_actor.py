"""Actors (virtual objects): keyed objects with durable state and a durable mailbox.

An actor is declared once (``@app.actor``); each *key* of it is an instance, activated on
demand. An instance is a run of the actor's workflow (``actor:{name}``) with the run id
``actor:{name}:{key}``, made by the first message sent to it; its mailbox is that run's
signals named :data:`MAILBOX`, in the order they were sent. What the core gives runs, an
instance has with nothing added:

* **one message at a time per key, on any number of workers**: a run executes under one
  lease (fencing), so at most one worker of a fleet holds an instance;
* **order**: its loop takes the oldest message first (the store's signal order);
* **exactly once**: a message's handler runs inside the instance's journal. Its *commit*
  is one step whose recorded value holds the message id and the new state, so the state
  and the message's acknowledgement are one journal append. A crash before it replays
  the message from the journal (the recorded steps of its handler return without running
  again, the rest runs); a crash after it replays the recorded state. Sending is
  at-least-once (a sender's step may send again after a crash), so an instance ignores a
  message whose id it has already taken: its idempotency key. A message sent by a
  workflow has the id of the sending step (``{run_id}/{step_id}``), the same on every
  re-execution; one sent from outside has a fresh id unless the caller gives one.
* **timers**: a handler's reminders are part of the committed state; the loop waits for
  the next message *or* the earliest reminder, on the runtime's clock (a long wait parks
  the run like any durable wait), and hands a due reminder to the handler as a message.
* **request/reply** (``ctx.ask``): the message names the asking run and a signal; the
  instance's commit step sends the reply (or the handler's error) to it, and the asker
  waits for that signal durably, like any ``wait_for_signal``.

The engine half lives here; :class:`stalwart.ActorContext` is what a handler is given,
and ``Runtime.actor``/``Runtime.send``/``Context.send``/``Context.ask`` are the faces.
"""

from __future__ import annotations

import inspect
import json
import math
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar, final

from .._serde import (
    ErrorInfo,
    decode,
    encode,
    encode_error,
    parameter_types,
    rebuild_error,
    return_type,
)
from ..errors import (
    ActorError,
    ActorKeyError,
    ActorNotFoundError,
    ConfigurationError,
    ContextMisuseError,
    LeaseLostError,
    NonDeterminismError,
    ResilienceError,
    RunNotFoundError,
    StoreError,
)
from ..store._base import EventKind, NewEvent, RunRecord, Store
from ._engine import Engine
from ._execution import Execution
from ._steps import begin, record_value, recorded_outcome, replayed, wait_for_signal
from ._workflow import Workflow

__all__ = ["MAILBOX", "Actor", "ActorMessage", "Turn", "actor_of", "actor_run_id", "ask",
           "check_key", "deliver", "message_body", "reply_signal", "send"]

S = TypeVar("S")
M = TypeVar("M")
R = TypeVar("R")

AnyActor: TypeAlias = "Actor[Any, Any, Any]"

MAILBOX = "stalwart.actor"
"""The signal name of an instance's mailbox."""

_REPLY = "stalwart.reply:"
_PREFIX = "actor:"
ASKER_SUFFIX = ":ask"
"""``actor:{name}:ask`` is the workflow of ``Runtime.ask`` (actor names hold no ':', so
it is never another actor's)."""
MAX_KEY_LENGTH = 200

_ACTORS: weakref.WeakKeyDictionary[Workflow[Any, Any], AnyActor] = (
    weakref.WeakKeyDictionary())

_WAITING: weakref.WeakKeyDictionary[Execution, tuple[str, ...]] = (
    weakref.WeakKeyDictionary())
"""Per instance execution, while a handler runs: the runs waiting for its reply (the
message's ``waiting`` and the instance itself), which its own asks must not target."""


def check_key(key: object, actor: str) -> str:
    """``key`` as an instance key: a non-empty ``str`` of printable characters, at most
    :data:`MAX_KEY_LENGTH` long, or an ``int`` (its decimal text: ``7`` and ``"7"`` are
    the same instance).

    Raises:
        ActorKeyError: any other type (``bool``, ``float``, ``None``, ``bytes``, a tuple...)
            or text that is empty, too long or holds a control character.
    """
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise ActorKeyError(
            f"actor {actor!r}: a key is a str or an int, not {type(key).__name__} "
            f"({key!r:.60})", actor=actor)
    text = str(key)
    if not text or len(text) > MAX_KEY_LENGTH or not text.isprintable():
        raise ActorKeyError(
            f"actor {actor!r}: a key must be 1 to {MAX_KEY_LENGTH} printable characters, "
            f"not {text!r:.80}", actor=actor)
    return text


def actor_run_id(name: str, key: str) -> str:
    """The run id of instance ``key`` of actor ``name``."""
    return f"{_PREFIX}{name}:{key}"


def reply_signal(message_id: str) -> str:
    """The signal an asker waits on for the reply to ``message_id``."""
    return f"{_REPLY}{message_id}"


@final
@dataclass(frozen=True, slots=True)
class ActorMessage:
    """A message as an instance takes it from its mailbox (or a due reminder).

    Attributes:
        id: the message id, its idempotency key.
        body: the message, as JSON data.
        reply_to: ``(run_id, signal)`` of an asker waiting for the reply, or ``None``.
        reminder: the name of the reminder that fired, for a reminder.
        waiting: for an ask, the runs waiting (through a chain of asks) for its reply,
            the asker last: an instance in it that the handler asks would never answer.
    """

    id: str
    body: Any
    reply_to: tuple[str, str] | None = None
    reminder: str | None = None
    waiting: tuple[str, ...] = ()

    def to_json(self) -> str:
        data: dict[str, Any] = {"id": self.id, "body": self.body,
                                "reply_to": list(self.reply_to) if self.reply_to else None}
        if self.waiting:
            data["waiting"] = list(self.waiting)
        return json.dumps(data, separators=(",", ":"), allow_nan=False)

    @staticmethod
    def from_json(text: str) -> ActorMessage:
        data = json.loads(text)
        reply = data.get("reply_to")
        return ActorMessage(str(data["id"]), data.get("body"),
                            (str(reply[0]), str(reply[1])) if reply else None,
                            waiting=tuple(str(r) for r in data.get("waiting") or ()))


@dataclass(slots=True)
class Turn:
    """What a handler's context reads and changes while it handles one message: the
    state, and the reminders it sets or cancels (committed with the state)."""

    key: str
    message: ActorMessage
    state: Any
    set_reminders: dict[str, tuple[float, Any]] = field(default_factory=dict)
    cancelled_reminders: set[str] = field(default_factory=set)


ContextFactory = Callable[[Any, AnyActor, Turn], Any]
"""Builds a handler's context from the run's context, the actor and the turn (given by
the runtime, which knows :class:`stalwart.ActorContext`; the engine does not)."""


@final
class Actor(Generic[S, M, R]):
    """A declared actor (``@app.actor``): its handler, its state type and initial state.

    Send it messages with ``app.send(actor, key, msg)``, ``ctx.send(actor, key, msg)``
    and ``ctx.ask(actor, key, msg)``; read an instance's state with
    ``app.actor_state(actor, key)``.
    """

    def __init__(self, fn: Callable[[Any, M], Awaitable[R]], *, state: Callable[[], S],
                 state_type: Any, name: str | None, make_context: ContextFactory) -> None:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(
                f"actor {getattr(fn, '__qualname__', fn)!r} must be an async function "
                "(ctx, message)")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) != 2:
            raise ConfigurationError(
                f"actor {fn.__qualname__!r} must take two parameters (ctx, message), not "
                f"{len(params)}")
        self.name = name or fn.__name__
        if not self.name or ":" in self.name or not self.name.isprintable():
            raise ConfigurationError(
                f"an actor's name must be printable text without ':', not {self.name!r}")
        self.fn: Callable[[Any, M], Awaitable[R]] = fn
        self.state_factory = state
        self.state_type = state_type
        self.message_type = parameter_types(fn).get(params[1].name, Any)
        self.reply_type = return_type(fn)
        self.make_context = make_context
        self.initial = encode(state(), state_type, what=f"initial state of actor {self.name!r}")

        async def instance(ctx: Any, key: str) -> None:
            await _serve(ctx, self, key)

        instance.__qualname__ = f"actor:{self.name}"
        self.workflow: Workflow[[str], None] = Workflow(instance, name=f"{_PREFIX}{self.name}")
        _ACTORS[self.workflow] = self

        async def asking(ctx: Any, key: str, message: Any, timeout: float | None) -> Any:
            return await ask(ctx.execution, self, key, message, timeout=timeout)

        asking.__qualname__ = f"actor:{self.name}:ask"
        self.asker: Workflow[[str, Any, float | None], Any] = Workflow(
            asking, name=f"{_PREFIX}{self.name}{ASKER_SUFFIX}")
        """The workflow behind ``Runtime.ask``: a run that asks once and answers the
        reply, so an ask from outside a workflow is as durable as ``ctx.ask``."""

    def __repr__(self) -> str:
        return f"<Actor {self.name}>"

    def decode_state(self, text: str) -> S:
        return decode(text, self.state_type,  # type: ignore[no-any-return]
                      what=f"state of actor {self.name!r}")


def actor_of(engine: Engine, actor: AnyActor | str) -> AnyActor:
    """The actor ``actor`` names, declared on ``engine``.

    Raises:
        ActorNotFoundError: no such actor is declared there (nothing was sent).
    """
    name = actor if isinstance(actor, str) else getattr(actor, "name", repr(actor))
    wf = engine.workflows.get(f"{_PREFIX}{name}") if isinstance(name, str) else None
    found = _ACTORS.get(wf) if wf is not None else None
    if found is None or (isinstance(actor, Actor) and found is not actor):
        raise ActorNotFoundError(
            f"no actor {name!r} is declared on this runtime (declare it with @app.actor "
            "in every process that sends to it or runs it)", actor=str(name))
    return found


async def deliver(store: Store, actor: AnyActor, key: str, message: ActorMessage, *,
                  now: float, exists: bool = False) -> RunRecord:
    """Put ``message`` into instance ``key``'s mailbox, making the instance first unless
    ``exists`` says it was made (both idempotent: a repeat makes no second instance; a
    repeated message is ignored by the instance, which knows its id)."""
    run_id = actor_run_id(actor.name, key)
    if not exists:
        await store.create_run(run_id=run_id, workflow=actor.workflow.name,
                               input=actor.workflow.encode_input((key,), {}), now=now,
                               workflow_ref=None)
    return await store.send_signal(run_id, MAILBOX, message.to_json(), now=now)


# -- the instance's loop ---------------------------------------------------------------


async def _serve(ctx: Any, actor: AnyActor, key: str) -> None:
    """An instance: take each message in order, handle it, commit; forever."""
    ex: Execution = ctx.execution
    state: Any = json.loads(actor.initial)
    reminders: dict[str, tuple[float, Any]] = {}
    seen: set[str] = set()
    while True:
        due = min(reminders.items(), key=lambda kv: (kv[1][0], kv[0])) if reminders else None
        message = await _receive(ex, None if due is None else due[1][0])
        if message is None:
            assert due is not None
            message = ActorMessage(f"reminder:{due[0]}@{due[1][0]!r}", due[1][1],
                                   reminder=due[0])
        elif message.id in seen:
            continue  # sent again by a sender that crashed after sending: done already
        seen.add(message.id)
        # The handler gets its own copy of the state: one that fails leaves none of its
        # changes behind.
        turn = Turn(key, message, actor.decode_state(json.dumps(state)))
        _WAITING[ex] = (*message.waiting, ex.run_id)
        try:
            outcome = await _handle(ctx, actor, turn)
        finally:
            _WAITING.pop(ex, None)
        committed = await _commit(ex, actor, turn, state, reminders, outcome)
        state = committed["state"]
        reminders = {name: (float(at), body)
                     for name, (at, body) in committed["reminders"].items()}


async def _receive(ex: Execution, due: float | None) -> ActorMessage | None:
    """The next message of the mailbox, or ``None`` when the reminder due at ``due``
    comes first; journaled like a signal wait (one step), so a replay takes the same."""
    name = MAILBOX  # the name the store journals a taken signal under
    step_id, recorded = begin(ex, name)
    for ev in recorded or ():
        if ev.kind == EventKind.SIGNAL_RECEIVED:
            return ActorMessage.from_json(ev.payload or "{}")
        if ev.kind == EventKind.SIGNAL_TIMED_OUT:
            return None
    ex.go_live(step_id, name)
    waiting = bool(recorded)
    since = ex.clock.monotonic()
    while True:
        if due is not None and ex.clock.now() >= due:
            await ex.record([NewEvent(EventKind.SIGNAL_TIMED_OUT, step_id, name)])
            return None
        # Take first: with messages waiting, a message costs one commit, not two.
        payload = await ex.take_signal(MAILBOX, step_id)
        if payload is not None:
            return ActorMessage.from_json(payload)
        if not waiting:
            await ex.record([NewEvent(EventKind.SIGNAL_WAIT_STARTED, step_id, name,
                                      json.dumps({"deadline": due}))])
            waiting = True
        await ex.wait_for_wakeup(due, since)


_PASS_THROUGH = (LeaseLostError, StoreError, NonDeterminismError, ResilienceError)
"""Errors that are no message's failure: the engine's own (another worker took over, the
journal failed, the code diverged) and an exhausted policy, which dead-letters the
instance as it would any run (a redrive goes on with the same message). They stop the
execution; the message stays uncommitted."""

Outcome = tuple[Any, ErrorInfo | None]


async def _handle(ctx: Any, actor: AnyActor, turn: Turn) -> Outcome:
    """Run the handler on ``turn``: its reply and the new state (as JSON data, in
    ``turn.state``), or its error."""
    try:
        body = decode(json.dumps(turn.message.body), actor.message_type,
                      what=f"message {turn.message.id} to actor {actor.name!r}")
        reply = await actor.fn(actor.make_context(ctx, actor, turn), body)
        reply_text = encode(reply, actor.reply_type, what=f"reply of actor {actor.name!r}")
        state_text = encode(turn.state, actor.state_type,
                            what=f"state of actor {actor.name!r}")
    except _PASS_THROUGH:
        raise
    except Exception as exc:
        return None, encode_error(exc)
    turn.state = json.loads(state_text)
    return json.loads(reply_text), None


def _reminders_after(turn: Turn, before: Mapping[str, tuple[float, Any]], ok: bool,
                     now: float) -> dict[str, list[Any]]:
    """The reminders an instance holds after ``turn``: the one that fired is gone; a
    handler that succeeded set and cancelled its own (``after`` seconds from ``now``)."""
    kept = {name: (at, body) for name, (at, body) in before.items()
            if name != turn.message.reminder}
    if ok:
        for name in turn.cancelled_reminders:
            kept.pop(name, None)
        for name, (after, body) in turn.set_reminders.items():
            kept[name] = (now + after, body)
    return {name: [at, body] for name, (at, body) in sorted(kept.items())}


async def _commit(ex: Execution, actor: AnyActor, turn: Turn, before: Any,
                  reminders: Mapping[str, tuple[float, Any]], outcome: Outcome,
                  ) -> dict[str, Any]:
    """The message's acknowledgement: one step whose value is the message id, the new
    state and reminders, and the reply or error. An asker gets the reply before the
    step is journaled: a crash between the two sends it again (the asker takes one)."""
    name = f"actor:{actor.name}.commit"
    step_id, recorded = begin(ex, name)
    outcome_event = recorded_outcome(recorded)
    if outcome_event is not None:
        return replayed(ex, step_id, outcome_event, Any)  # type: ignore[no-any-return]
    ex.go_live(step_id, name)
    reply, error = outcome
    value = {"id": turn.message.id, "state": turn.state if error is None else before,
             "reply": reply, "error": None if error is None else json.loads(error.to_json()),
             "reminders": _reminders_after(turn, reminders, error is None, ex.clock.now())}
    if turn.message.reply_to is not None:
        await _reply(ex, turn.message.reply_to, value)
    return await record_value(ex, step_id, name, value, Any)  # type: ignore[no-any-return]


async def _reply(ex: Execution, to: tuple[str, str], value: Mapping[str, Any]) -> None:
    run_id, signal = to
    payload = json.dumps({"reply": value["reply"], "error": value["error"]},
                         separators=(",", ":"), allow_nan=False)
    await ex.fence()
    try:
        await ex.store.send_signal(run_id, signal, payload, now=ex.clock.now())
    except RunNotFoundError:
        return  # the asker is gone (deleted): nobody to answer
    ex.engine.wake_local(run_id)
    ex.engine.journal_written(run_id)


# -- sending from a workflow --------------------------------------------------------------


def message_body(actor: AnyActor, message: object) -> Any:
    """``message`` as the JSON data a mailbox keeps (checked against the handler's
    declared message type).

    Raises:
        SerializationError: it cannot be stored or is not of that type.
    """
    return json.loads(encode(message, actor.message_type,
                             what=f"message to actor {actor.name!r}"))


async def send(ex: Execution, target: AnyActor | str, key: object, message: object, *,
               ask: bool = False, waiting: tuple[str, ...] = ()) -> tuple[AnyActor, str, str]:
    """``ctx.send``: one step that puts the message into the instance's mailbox; its id
    is the step's (``{run_id}/{step_id}``), so a repeat after a crash is the same
    message. Returns the actor, the key and the message id. Bad input (an undeclared
    actor, a bad key, a message that cannot be stored) is refused before the step."""
    actor = actor_of(ex.engine, target)
    text_key = check_key(key, actor.name)
    body = message_body(actor, message)
    name = f"{'ask' if ask else 'send'}:{actor.name}"
    step_id, recorded = begin(ex, name)
    outcome = recorded_outcome(recorded)
    if outcome is not None:
        return actor, text_key, str(replayed(ex, step_id, outcome, str))
    ex.go_live(step_id, name)
    message_id = f"{ex.run_id}/{step_id}"
    reply_to = (ex.run_id, reply_signal(message_id)) if ask else None
    await ex.fence()
    await deliver(ex.store, actor, text_key,
                  ActorMessage(message_id, body, reply_to, waiting=waiting if ask else ()),
                  now=ex.clock.now())
    ex.engine.wake_local(actor_run_id(actor.name, text_key))
    ex.engine.poke()
    await record_value(ex, step_id, name, message_id, str)
    return actor, text_key, message_id


async def ask(ex: Execution, target: AnyActor | str, key: object, message: object, *,
              timeout: float | None) -> Any:
    """``ctx.ask``: send (one step), then wait for the reply (a durable signal wait)."""
    if timeout is not None and not 0 <= timeout < math.inf:
        raise ValueError(f"ask() needs a finite, non-negative timeout in seconds or None, "
                         f"not {timeout!r}")
    found = actor_of(ex.engine, target)
    waiting = _WAITING.get(ex, (ex.run_id,))
    asked = actor_run_id(found.name, check_key(key, found.name))
    if asked == ex.run_id:
        raise ContextMisuseError(
            f"actor {found.name!r} key {key!r} cannot ask itself: it handles one message "
            "at a time, so the reply would never come (use ctx.send, or call the code "
            "directly)", run_id=ex.run_id)
    if asked in waiting:
        chain = " -> ".join((*waiting[waiting.index(asked):], asked))
        raise ContextMisuseError(
            f"{ex.run_id} cannot ask {asked}: that instance is waiting for this one's "
            f"reply ({chain}, each handling one message at a time), so the reply would "
            "never come: a deadlock (use ctx.send for one direction)", run_id=ex.run_id)
    actor, text_key, message_id = await send(ex, target, key, message, ask=True,
                                             waiting=waiting)
    answer = await wait_for_signal(ex, reply_signal(message_id), timeout)
    if answer.get("error") is not None:
        info = ErrorInfo.from_dict(answer["error"])
        raise ActorError(
            f"actor {actor.name!r} key {text_key!r} failed on message {message_id}: "
            f"{info.type}: {info.message}", actor=actor.name, key=text_key,
            message_id=message_id, error_type=info.type, run_id=ex.run_id,
        ) from rebuild_error(info, run_id=actor_run_id(actor.name, text_key))
    return decode(json.dumps(answer.get("reply")), actor.reply_type,
                  what=f"reply of actor {actor.name!r}")

"""The one exception hierarchy of stalwart.

Every error stalwart raises on purpose derives from :class:`StalwartError`. Each carries
whether a retry could help (``retryable``), how long to wait before one (``retry_after``,
seconds, or ``None``) and where it happened (``run_id``, ``step_id``, ``attempt``)::

    StalwartError
    ├── ConfigurationError            bad arguments, unknown store URL, ...
    │   ├── IdempotencyConflictError  a run id reused with other input or workflow
    │   ├── GraphBuildError           a state graph that cannot run as drawn
    │   ├── ActorNotFoundError        a message to an actor not declared on the runtime
    │   ├── ActorKeyError             an actor key that is not a str or int (or bad text)
    │   ├── ToolSchemaError           a tool schema that is not valid JSON Schema
    │   └── DuplicateToolError        two tools of one registry with the same name
    ├── SerializationError            a value cannot round-trip through the journal
    ├── StoreError                    the journal cannot be used
    │   ├── NotAStalwartStoreError    the file/database is not a stalwart journal
    │   ├── SchemaVersionError        a journal of another schema version
    │   ├── StoreCorruptedError       the file is damaged
    │   └── LeaseLostError            another worker owns the run now (fencing)
    ├── RunNotFoundError
    ├── WorkflowNotFoundError
    ├── NonDeterminismError           workflow code changed under a recorded run
    ├── RemoteError                   a recorded error of a type not rebuilt from the
    │                                 journal (type name, message, traceback, attributes)
    ├── ContextMisuseError            ctx used where it must not be (inside a step, ...)
    ├── ContextOverflowError          a request would not fit its context window, and
    │                                 its policy could not (or may not) make it fit
    ├── SignalTimeoutError            ctx.wait_for_signal timed out
    ├── RunFailedError                handle.result() of a failed run
    ├── RunCancelledError             handle.result() of a cancelled run
    ├── RestartIntensityError         a supervisor's children restarted too often
    ├── SagaAbortedError              a saga rolled back after a ResilienceError
    ├── GraphError                    a graph node's update or a router's answer does
    │   │                             not fit its graph
    │   └── GraphStepLimitError       a graph run took more than max_steps supersteps
    ├── ActorError                    the actor's handler failed on an asked message
    ├── HandoffError                  a handoff between agents could not be made
    │   ├── HandoffContractError      the sender did not satisfy the contract (re-asks spent)
    │   ├── HandoffLimitError         a chain of handoffs longer than max_hops
    │   └── HandoffLoopError          a handoff that repeats an earlier one of the chain
    ├── EnsembleError                 an ensemble could not settle on an answer
    │   ├── NoQuorumError             no answer of a vote reached its quorum
    │   ├── DivergenceError           a mixture's proposers disagreed over escalate_above
    │   ├── RefinementExhaustedError  the critic accepted no draft within max_rounds
    │   └── ReflexionExhaustedError   no trial passed the evaluator within max_trials
    ├── BlackboardError               a blackboard operation could not be done
    │   ├── BoardConflictError        compare-and-set lost: the entry is at another version
    │   └── BoardPatternError         a read/take pattern that is not valid (also a
    │                                 ConfigurationError)
    ├── MemoryStoreError              an agent's warm/cold memory (sw.Memory) could not
    │   │                             be written or searched
    │   ├── MemoryQueryError          an empty query, k < 1 (also a ValueError)
    │   └── EmbeddingError            the embedding function returned no vector, a
    │                                 non-finite one, or one of other dimensions
    ├── ResilienceError               raised by the policy stack
    │   ├── EscalatedError            a pattern escalated to the dead-letter queue (its
    │   │                             evidence attached; the cause is the pattern's error)
    │   ├── RetryExhaustedError       Retry gave up; __cause__ is the last error
    │   ├── CallTimeoutError          a timeout or deadline scope expired; retryable
    │   ├── CircuitOpenError          the breaker rejected the call; retryable after
    │   │                             retry_after (Retry waits for the half-open probe)
    │   ├── BulkheadFullError         no slot: queue full or queue_timeout; retryable
    │   ├── ThrottledError            the local rate limiter would wait past max_wait
    │   ├── FallbackExhaustedError    every model of a fallback chain failed
    │   ├── BudgetExceededError       a run or agent reached a Budget (alias BudgetExceeded)
    │   └── CompensationFailedError   a saga's compensation failed: the run is dead-lettered
    ├── ToolArgumentsError            a tool's arguments did not validate (a ValueError)
    ├── UnsafeArgumentError           a safe tool helper refused an argument (a path out
    │                                 of its root, a shell string, spliced SQL)
    ├── ToolServerError               an MCP server or A2A agent failed a call
    │   ├── ToolServerUnavailableError unreachable, died, connection lost; retryable
    │   ├── ToolResultError           a result not matching its tool's output schema
    │   └── RemoteToolError           the remote tool reported an error; not retryable
    ├── OutcomeCheckError             an output failed its check (a semantic failure);
    │                                 retryable: "HTTP 200 but wrong" may be right next time
    ├── AgentError                    an agent's loop could not produce an answer
    │   ├── MaxIterationsError        the loop hit max_iterations (no fallback output)
    │   ├── ToolLoopError             the same tool call with the same arguments, N times
    │   ├── RepairBudgetExceededError too many malformed tool calls from the model
    │   └── OutputValidationError     the final answer failed output_type after re-asks
    └── ModelError                    raised by model adapters and the simulator;
        │                             the ones below also carry provider, model, status_code
        ├── RateLimitedError          429; retryable, retry_after from Retry-After
        ├── ProviderOverloadedError   5xx / 529 / outage; retryable
        ├── ModelTimeoutError         no answer in time; retryable
        ├── ModelConnectionError      connect failed, connection dropped; retryable
        ├── MalformedResponseError    unparseable body or missing fields; retryable
        ├── InvalidRequestError       400 / 404 / 422; not retryable
        ├── AuthenticationError       401 / 403; not retryable
        └── ContentFilterError        the provider refused or filtered; not retryable

**Errors in the journal are data.** A failure is journaled as its type's qualified name,
its message, its traceback as text and the attributes its class declares in
``journal_attributes`` (each class lists its own; a subclass adds to its bases'). Replay
rebuilds only builtin exception types and the classes of this module from that record,
never importing anything the journal names; every other type comes back as a
:class:`RemoteError` carrying the same facts.

Control flow stays outside the root, so ``except StalwartError`` or even
``except Exception`` in workflow code never swallows it: :class:`Cancelled` is raised
inside a workflow whose run was cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar, final

__all__ = [
    "ActorError",
    "ActorKeyError",
    "ActorNotFoundError",
    "AgentError",
    "ApprovalConflictError",
    "ApprovalError",
    "ApprovalNotFoundError",
    "ApprovalTimeoutError",
    "BlackboardError",
    "BoardConflictError",
    "BoardPatternError",
    "EmbeddingError",
    "MemoryQueryError",
    "MemoryStoreError",
    "DivergenceError",
    "EnsembleError",
    "EscalatedError",
    "NoQuorumError",
    "RefinementExhaustedError",
    "ReflexionExhaustedError",
    "FallbackExhaustedError",
    "GraphBuildError",
    "GraphError",
    "GraphStepLimitError",
    "HandoffContractError",
    "HandoffError",
    "HandoffLimitError",
    "HandoffLoopError",
    "IdempotencyConflictError",
    "MaxIterationsError",
    "OutputValidationError",
    "RepairBudgetExceededError",
    "ToolLoopError",
    "AuthenticationError",
    "BudgetExceeded",
    "BudgetExceededError",
    "BulkheadFullError",
    "CallTimeoutError",
    "Cancelled",
    "CircuitOpenError",
    "CompensationFailedError",
    "ConfigurationError",
    "ContentFilterError",
    "ContextMisuseError",
    "ContextOverflowError",
    "InvalidRequestError",
    "LeaseLostError",
    "MalformedResponseError",
    "ModelConnectionError",
    "ModelError",
    "ModelTimeoutError",
    "NonDeterminismError",
    "NotAStalwartStoreError",
    "OutcomeCheckError",
    "ProviderOverloadedError",
    "ProviderQuota",
    "RateLimitedError",
    "RemoteError",
    "ResilienceError",
    "RestartIntensityError",
    "RetryExhaustedError",
    "RunCancelledError",
    "RunFailedError",
    "RunNotFoundError",
    "SagaAbortedError",
    "SchemaVersionError",
    "SerializationError",
    "SignalTimeoutError",
    "StalwartError",
    "StoreCorruptedError",
    "StoreError",
    "ThrottledError",
    "ToolArgumentsError",
    "WorkflowNotFoundError",
    "ToolSchemaError",
    "DuplicateToolError",
    "ToolServerError",
    "ToolServerUnavailableError",
    "ToolResultError",
    "RemoteToolError",
]


class StalwartError(Exception):
    """Root of every error stalwart raises.

    Attributes:
        retryable: whether repeating the failed operation could succeed.
        retry_after: seconds to wait before a retry, when the failure says so.
        run_id, step_id, attempt: where it happened, when known.
        journal_attributes: (class attribute) the attributes the journal keeps of an
            instance besides its message; each class names its own, and those of its
            bases are kept too. Any exception class may declare it, ours or not.
    """

    retryable: bool = False
    journal_attributes: ClassVar[tuple[str, ...]] = (
        "retryable", "retry_after", "run_id", "step_id", "attempt")

    def __init__(
        self,
        message: str = "",
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        run_id: str | None = None,
        step_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable
        self.retry_after = retry_after
        self.run_id = run_id
        self.step_id = step_id
        self.attempt = attempt

    def __str__(self) -> str:
        return self.message

    def located(self, *, run_id: str | None = None, step_id: str | None = None) -> Self:
        """This error, saying where it happened: ``self`` when it already names a run
        (and, if ``step_id`` is given, a step), else a new error of the same type with
        the same attributes, traceback and cause, and the run and step filled in where
        it had none. An error is never changed after it was made: one raised by a lower
        layer that knew no run (a model adapter, a policy) is located by the engine
        this way before it is journaled and raised to workflow code."""
        if (self.run_id is not None or run_id is None) and (
                self.step_id is not None or step_id is None):
            return self
        state = dict(self.__dict__)
        if self.run_id is None:
            state["run_id"] = run_id
        if self.step_id is None:
            state["step_id"] = step_id
        err = _rebuild(type(self), self.message, state)
        err.__cause__ = self.__cause__
        err.__suppress_context__ = self.__suppress_context__
        return err.with_traceback(self.__traceback__)

    def __reduce__(self) -> tuple[Any, ...]:
        # For processes that pickle exceptions (multiprocessing, concurrent.futures): the
        # keyword-only constructors would not take back ``args``. The journal never
        # pickles: see the module docstring.
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


_E = TypeVar("_E", bound="StalwartError")


def _rebuild(cls: type[_E], message: str, state: dict[str, Any]) -> _E:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


def _install_hint(extra: str) -> str:
    """The command that installs an extra, for the error that names a missing one:
    stalwart is installed from a checkout (the project's name given to ``pip install``
    would ask the package index for a project of that name)."""
    return f"pip install -e '.[{extra}]' in a checkout"


class ConfigurationError(StalwartError):
    """Invalid configuration or arguments (a bad store URL, an unknown option...)."""


class SerializationError(StalwartError):
    """A value cannot be stored in the journal and read back with its type."""


class StoreError(StalwartError):
    """The journal store cannot be used."""


class NotAStalwartStoreError(StoreError):
    """The file or database exists but is not a stalwart journal; it was left untouched."""


class IdempotencyConflictError(ConfigurationError):
    """A run id was started again with other input (or for another workflow) than the
    run that already has it. As with Stripe's idempotency keys, the same id with the same
    input returns the existing run; ``if_exists="return"`` returns it whatever the input.

    Attributes:
        workflow: the workflow of the existing run.
        existing_input_hash: SHA-256 of the existing run's input (canonical JSON).
        input_hash: SHA-256 of the input given now.
    """

    journal_attributes = ("workflow", "existing_input_hash", "input_hash")

    def __init__(self, message: str, *, workflow: str, existing_input_hash: str,
                 input_hash: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.workflow = workflow
        self.existing_input_hash = existing_input_hash
        self.input_hash = input_hash


class SchemaVersionError(StoreError):
    """The journal was written by a stalwart of another schema version."""

    journal_attributes = ("found", "expected")

    def __init__(self, message: str, *, found: int, expected: int) -> None:
        super().__init__(message)
        self.found = found
        self.expected = expected


class StoreCorruptedError(StoreError):
    """The journal file is damaged; nothing was written to it."""


class LeaseLostError(StoreError):
    """This worker no longer owns the run's lease; its write was rejected (fencing)."""


class RunNotFoundError(StalwartError):
    """No run with that id exists in the store."""


class WorkflowNotFoundError(StalwartError):
    """No workflow is registered or importable under that name."""


class NonDeterminismError(StalwartError):
    """Replay found a different step at a recorded step id: the code changed under a run.

    Attributes:
        recorded: the step name in the journal at ``step_id`` (``None`` if nothing was).
        current: the step name the current code asked for (``None`` if it asked for none).
    """

    journal_attributes = ("recorded", "current")

    def __init__(
        self,
        message: str,
        *,
        run_id: str,
        step_id: str,
        recorded: str | None,
        current: str | None,
    ) -> None:
        super().__init__(message, run_id=run_id, step_id=step_id)
        self.recorded = recorded
        self.current = current


class RemoteError(StalwartError):
    """A journaled error whose type stalwart does not rebuild: any type but the builtin
    exceptions and the classes of :mod:`stalwart.errors`. It carries what the journal
    recorded of the original, on the first execution as on every replay (the same
    branch of an ``except`` is taken both times), like Temporal's
    ``ApplicationError(type=...)``.

    It is also an instance of the nearest builtin exception class the original type
    derived from, so ``except ValueError`` still catches a recorded
    ``json.JSONDecodeError`` or pydantic ``ValidationError``. Match your own types with
    :meth:`matches`, or on :attr:`type_name`.

    Attributes:
        type_name: the original type's qualified name (``"billing.PaymentDeclined"``).
        traceback: the original traceback, as text.
        attributes: the attributes the original's class declared in
            ``journal_attributes`` (as JSON values: a list comes back as a tuple).
        bases: qualified names of the original type's base classes, nearest first.
    """

    journal_attributes = ("type_name", "attributes", "bases")

    def __init__(self, message: str, *, type_name: str, traceback: str = "",
                 attributes: Mapping[str, Any] | None = None, bases: Sequence[str] = (),
                 **context: Any) -> None:
        attrs = dict(attributes or {})
        retryable = attrs.get("retryable")
        retry_after = attrs.get("retry_after")
        context.setdefault("retryable", retryable if isinstance(retryable, bool) else None)
        context.setdefault("retry_after", float(retry_after)
                           if isinstance(retry_after, int | float)
                           and not isinstance(retry_after, bool) else None)
        super().__init__(message, **context)
        self.type_name = type_name
        self.traceback = traceback
        self.attributes = attrs
        self.bases = tuple(bases)

    def matches(self, *types: type[BaseException] | str) -> bool:
        """Whether the original was one of ``types`` (or a subclass of one): each a class,
        its qualified name (``"billing.PaymentDeclined"``) or its bare name."""
        names = (self.type_name, *self.bases)
        for t in types:
            want = t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}"
            if any(n == want or n.rpartition(".")[2] == want for n in names):
                return True
        return False


class ContextMisuseError(StalwartError):
    """The workflow context was used where it must not be (inside a step, after the run)."""


class ContextOverflowError(StalwartError):
    """A model request would not fit its :class:`~stalwart.ContextWindow`: the window's
    policy is ``reject``, or no policy could make room without dropping a pinned message
    (the system prompt, the task, the latest user turn). Raised before the call: the
    provider never sees the request. Not retryable: the same history overflows again.

    Attributes:
        needed: tokens the request counts.
        limit: tokens the window allows a request (capacity - reserve, less a margin).
        capacity, reserve_output: the window's numbers.
        pinned: tokens of what may not be moved (the floor of any policy).
    """

    journal_attributes = ("needed", "limit", "capacity", "reserve_output", "pinned")

    def __init__(self, message: str, *, needed: int, limit: int, capacity: int,
                 reserve_output: int, pinned: int, **context: Any) -> None:
        super().__init__(message, **context)
        self.needed = needed
        self.limit = limit
        self.capacity = capacity
        self.reserve_output = reserve_output
        self.pinned = pinned


class SignalTimeoutError(StalwartError):
    """``ctx.wait_for_signal`` reached its timeout before the signal arrived."""

    journal_attributes = ("signal",)

    def __init__(self, message: str, *, signal: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.signal = signal


class ApprovalError(StalwartError):
    """A decision on a human approval (``ctx.approval``) that cannot be taken."""

    journal_attributes = ("approval",)

    def __init__(self, message: str, *, approval: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.approval = approval


class ApprovalNotFoundError(ApprovalError):
    """The run has no such approval (or several pending ones share the name given)."""


class ApprovalConflictError(ApprovalError):
    """The decision contradicts the approval: its token is for another payload than the
    one the run asked about, or the other decision was already made (a decision is
    final)."""


class ApprovalTimeoutError(ApprovalError):
    """``ctx.approval`` reached its timeout undecided, and it has no ``default``."""


class RunFailedError(StalwartError):
    """The run ended with an error; ``error_type`` and the message say which.

    ``__cause__`` holds the original exception, rebuilt from the journal.
    """

    journal_attributes = ("error_type",)

    def __init__(self, message: str, *, error_type: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.error_type = error_type


class RunCancelledError(StalwartError):
    """The run was cancelled before it finished."""


class RestartIntensityError(StalwartError):
    """A supervisor (``ctx.supervise``) would have restarted its children more than
    ``max_restarts`` times within ``within`` seconds: it stopped them and fails, which
    escalates the failure to its parent. Not retryable.

    Attributes:
        child: the id of the child whose end asked for the restart.
        reason: how that child ended (``failed: ValueError: ...``).
        restarts: the restarts within the window, this one included.
        max_restarts, within: the supervisor's intensity limits.
    """

    journal_attributes = ("child", "reason", "restarts", "max_restarts", "within")

    def __init__(self, message: str, *, child: str, reason: str, restarts: int,
                 max_restarts: int, within: float, **context: Any) -> None:
        super().__init__(message, **context)
        self.child = child
        self.reason = reason
        self.restarts = restarts
        self.max_restarts = max_restarts
        self.within = within


class SagaAbortedError(StalwartError):
    """A saga was rolled back (its compensations ran) after an error that would have
    dead-lettered the run (a :class:`ResilienceError`, the ``__cause__``). The run fails
    rather than waiting in the dead-letter queue: a redrive could not resume an undone
    saga forward.

    Attributes:
        undone: the forward steps whose compensations ran, in the order they ran.
    """

    journal_attributes = ("undone",)

    def __init__(self, message: str, *, undone: list[str], **context: Any) -> None:
        super().__init__(message, **context)
        self.undone = undone


class GraphBuildError(ConfigurationError):
    """A state graph cannot run as drawn (``Graph.compile``): an edge to or from a node
    that does not exist, a node with no way out, one unreachable from START or with no
    path to END, a conditional edge with undeclared targets. Nothing was run.

    Attributes:
        problems: every problem found, one line each.
    """

    journal_attributes = ("problems",)

    def __init__(self, message: str, *, problems: Sequence[str] = (),
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.problems = list(problems)


class ActorNotFoundError(ConfigurationError):
    """A message to an actor that is not declared (``@app.actor``) on the runtime that
    sends it: nothing was sent and no instance was made.

    Attributes:
        actor: the actor's name as given.
    """

    journal_attributes = ("actor",)

    def __init__(self, message: str, *, actor: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.actor = actor


class ActorKeyError(ConfigurationError):
    """An actor instance key that is not a ``str`` or an ``int``, or text that is empty,
    too long or holds a control character: nothing was sent.

    Attributes:
        actor: the actor's name.
    """

    journal_attributes = ("actor",)

    def __init__(self, message: str, *, actor: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.actor = actor


class ActorError(StalwartError):
    """``ctx.ask``: the actor's handler raised on the message (the instance's state is as
    it was before it). Not retryable: asking again sends a new message.

    Attributes:
        actor, key: the instance asked.
        message_id: the message's id.
        error_type: the qualified name of the handler's error.
    """

    journal_attributes = ("actor", "key", "message_id", "error_type")

    def __init__(self, message: str, *, actor: str | None = None, key: str | None = None,
                 message_id: str | None = None, error_type: str | None = None,
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.actor = actor
        self.key = key
        self.message_id = message_id
        self.error_type = error_type


class GraphError(StalwartError):
    """A graph run met something its graph does not allow: a node's update names no
    field of the state or does not validate, two parallel nodes set one field that has
    no reducer, a router named a target it did not declare. Not retryable.

    Attributes:
        node: the node (or router's source node) concerned.
    """

    journal_attributes = ("node",)

    def __init__(self, message: str, *, node: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.node = node


class GraphStepLimitError(GraphError):
    """A graph run would take more than ``max_steps`` supersteps (a cycle that does not
    reach END): refused before the superstep runs. Not retryable.

    Attributes:
        max_steps: the bound.
    """

    journal_attributes = ("max_steps",)

    def __init__(self, message: str, *, max_steps: int, **context: Any) -> None:
        super().__init__(message, **context)
        self.max_steps = max_steps


class HandoffError(StalwartError):
    """A handoff from one agent to another could not be made. Not retryable.

    Attributes:
        source, target: the agents (names) the handoff was from and to.
        chain: the agents of the run of handoffs so far, in order.
    """

    journal_attributes: ClassVar[tuple[str, ...]] = ("source", "target", "chain")

    def __init__(self, message: str, *, source: str | None = None,
                 target: str | None = None, chain: Sequence[str] = (),
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.source = source
        self.target = target
        self.chain = list(chain)


class HandoffContractError(HandoffError):
    """The sending agent's model kept handing off with arguments that do not satisfy the
    handoff's contract (a missing or invalid canonical field, a local field), after
    ``max_reasks`` structured errors sent back to it.

    Attributes:
        problems: what was wrong with the last attempt, one line each.
    """

    journal_attributes = ("problems",)

    def __init__(self, message: str, *, problems: Sequence[str] = (),
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.problems = list(problems)


class HandoffLimitError(HandoffError):
    """A chain of handoffs would take more than ``max_hops`` handoffs.

    Attributes:
        max_hops: the bound.
    """

    journal_attributes = ("max_hops",)

    def __init__(self, message: str, *, max_hops: int, **context: Any) -> None:
        super().__init__(message, **context)
        self.max_hops = max_hops


class HandoffLoopError(HandoffError):
    """A handoff repeats one made earlier in the chain (same agents, same contract): the
    chain would go round without progress."""


class ResilienceError(StalwartError):
    """Raised by the resilience policies (breakers, bulkheads, rate limits, budgets)."""


class ModelError(StalwartError):
    """Raised by a model adapter; subclasses say what kind of failure it was."""


class Cancelled(BaseException):
    """Raised inside a workflow whose run was cancelled, at its next step boundary.

    It derives from ``BaseException`` so that ``except Exception`` in workflow code does
    not swallow it.
    """


# --- model adapter failures -------------------------------------------------------------
# Every adapter (OpenAI, Anthropic, the simulator) maps each provider, SDK or HTTP failure
# into exactly one of these, so policies decide on ``retryable``/``retry_after`` alone.


class _ProviderError(ModelError):
    """Shared constructor: which provider and model failed, and the HTTP status if any."""

    journal_attributes: ClassVar[tuple[str, ...]] = ("provider", "model", "status_code")

    def __init__(
        self,
        message: str = "",
        *,
        provider: str | None = None,
        model: str | None = None,
        status_code: int | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.provider = provider
        self.model = model
        self.status_code = status_code


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderQuota:
    """What a provider said about its rate limits on a response (its ``x-ratelimit-*``
    or ``anthropic-ratelimit-*`` headers); ``None`` where it said nothing.

    Limits are per minute (the RPM and TPM quotas both providers publish); resets are
    seconds from when the response arrived until that quota is whole again.
    """

    requests_limit: float | None = None
    requests_remaining: float | None = None
    requests_reset: float | None = None
    tokens_limit: float | None = None
    tokens_remaining: float | None = None
    tokens_reset: float | None = None

    def exhausted_for(self) -> float | None:
        """Seconds until a call can pass again when a quota is used up (remaining 0),
        the longest of them; ``None`` if no quota is known to be used up."""
        waits = [reset for remaining, reset in (
            (self.requests_remaining, self.requests_reset),
            (self.tokens_remaining, self.tokens_reset))
            if remaining is not None and remaining <= 0 and reset is not None]
        return max(waits) if waits else None


class RateLimitedError(_ProviderError):
    """The provider rejected the call for rate (HTTP 429); ``retry_after`` says how long
    it asked us to wait (from ``Retry-After``, seconds or an HTTP date, or else from the
    time until an exhausted quota resets), when it did.

    Attributes:
        quota: what the response's rate-limit headers said, when it had any; the policy
            stack adapts its rate limiter to it (not journaled).
    """

    retryable = True
    journal_attributes = ("quota",)

    def __init__(self, message: str = "", *, quota: ProviderQuota | None = None,
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.quota = quota


class ProviderOverloadedError(_ProviderError):
    """The provider failed on its side (HTTP 5xx, Anthropic's 529, an outage)."""

    retryable = True


class ModelTimeoutError(_ProviderError):
    """No complete answer arrived within the client's timeout."""

    retryable = True


class ModelConnectionError(_ProviderError):
    """The connection could not be made or was dropped before a response arrived."""

    retryable = True


class MalformedResponseError(_ProviderError):
    """The response body could not be parsed or lacks required fields."""

    retryable = True


class InvalidRequestError(_ProviderError):
    """The provider rejected the request itself (HTTP 400, 404, 422); retrying is futile."""


class AuthenticationError(_ProviderError):
    """The credentials were missing, wrong or lack permission (HTTP 401, 403)."""


class ContentFilterError(_ProviderError):
    """The provider refused or filtered the content (a policy decision, not a fault)."""


# --- resilience policy failures ---------------------------------------------------------
# Raised by ``stalwart.policies``; each says whether the policy stack above may retry.


class RetryExhaustedError(ResilienceError):
    """Retry gave up on retryable failures (attempts used up, ``max_elapsed`` or the
    deadline reached); ``__cause__`` is the last error.

    Attributes:
        attempts: how many attempts were made, counting those before a resume.
        errors: the failures seen by this driver, oldest first.
        reason: why it gave up, in words.
    """

    journal_attributes = ("attempts", "errors", "reason")

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        errors: tuple[BaseException, ...] = (),
        reason: str = "",
        **context: Any,
    ) -> None:
        super().__init__(message, **context)
        self.attempts = attempts
        self.errors = errors
        self.reason = reason


class CallTimeoutError(ResilienceError):
    """A call outlived its timeout, or its enclosing deadline scope expired.

    Attributes:
        timeout: the limit in seconds that expired, when known.
    """

    retryable = True
    journal_attributes = ("timeout",)

    def __init__(self, message: str, *, timeout: float | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.timeout = timeout


class CircuitOpenError(ResilienceError):
    """The circuit breaker of a dependency rejected the call without making it.

    ``retry_after`` is the time left until the breaker lets a trial call through. The
    policy stack never hammers an open breaker: Fallback moves on to a model that can
    answer now, and otherwise Retry, with attempts and time left, waits the open time
    out (jittered) and tries the half-open breaker's trial call. Retryable in that sense.

    Attributes:
        key: the dependency whose breaker is open (``"openai:gpt-4o"``).
        state: ``"open"`` or ``"half_open"`` (trial calls all taken).
    """

    retryable = True
    journal_attributes = ("key", "state")

    def __init__(self, message: str, *, key: str, state: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.key = key
        self.state = state


class BulkheadFullError(ResilienceError):
    """The bulkhead had no free slot: its queue was full, or the wait hit ``queue_timeout``.

    Attributes:
        name: the bulkhead's pool name.
        reason: ``"queue_full"`` or ``"queue_timeout"``.
    """

    retryable = True
    journal_attributes = ("name", "reason")

    def __init__(self, message: str, *, name: str, reason: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.name = name
        self.reason = reason


class ThrottledError(ResilienceError):
    """The local rate limiter would make the call wait longer than allowed.

    Unlike :class:`RateLimitedError` (the provider said 429), nothing was sent;
    ``retry_after`` is the wait the limiter computed.

    Attributes:
        key: the limiter's provider/model key.
    """

    retryable = True
    journal_attributes = ("key",)

    def __init__(self, message: str, *, key: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.key = key


class FallbackExhaustedError(ResilienceError):
    """Every model of a fallback chain failed or had its breaker open.

    Attributes:
        keys: the dependency keys tried, in order.
    """

    journal_attributes = ("keys",)

    def __init__(self, message: str, *, keys: tuple[str, ...], **context: Any) -> None:
        super().__init__(message, **context)
        self.keys = keys


class BudgetExceededError(ResilienceError):
    """A run (or an agent within it) reached one of its :class:`~stalwart.Budget` limits;
    the call that would have gone over was not made. Not retryable: the totals are
    rebuilt from the journal, so the same budget stops the run again after a resume.

    Attributes:
        budget: which limit: ``"max_tokens"``, ``"max_cost"``, ``"max_steps"`` or
            ``"max_seconds"``.
        level: where the budget was set: ``"runtime"``, ``"workflow"`` or ``"agent"``
            (``"split"``: :meth:`~stalwart.Budget.split` had nothing left to divide).
        agent: the agent whose budget it was (its name; ``None`` at the other levels):
            a sub-agent run with its share of a split names itself here.
        limit: the limit's value.
        used: how much had been used when the next call was refused.
        over: ``used - limit`` (zero or more; at most one call's worth).
    """

    journal_attributes = ("budget", "level", "agent", "limit", "used", "over")

    def __init__(self, message: str, *, budget: str, level: str, limit: float, used: float,
                 agent: str | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.budget = budget
        self.level = level
        self.agent = agent
        self.limit = limit
        self.used = used
        self.over = max(0.0, used - limit)


BudgetExceeded = BudgetExceededError
"""The name the design notes use for :class:`BudgetExceededError`."""


class OutcomeCheckError(StalwartError):
    """An output failed its outcome check: ``output_type`` validation or a ``check=``
    predicate. It is a failure like a 500 for breakers, retries and statistics.

    Attributes:
        key: the dependency that produced the output (``provider:model``, ``tool:name``,
            ``step:name``).
        reason: what was wrong, in words.
    """

    retryable = True
    journal_attributes = ("key", "reason")

    def __init__(self, message: str, *, key: str, reason: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.key = key
        self.reason = reason


# --- ensembles and the blackboard ----------------------------------------------------


class EnsembleError(StalwartError):
    """An ensemble (``sw.vote``, ``sw.mixture``, ``sw.refine``, ``sw.reflexion``) could not
    settle on an answer it may return. Not retryable: the members' answers are journaled,
    so running it again gives the same outcome.

    Attributes:
        pattern: which ensemble (``"vote"``, ``"mixture"``, ``"refine"``, ``"reflexion"``).
    """

    journal_attributes: ClassVar[tuple[str, ...]] = ("pattern",)

    def __init__(self, message: str, *, pattern: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.pattern = pattern


class NoQuorumError(EnsembleError):
    """No answer of a vote reached its quorum (or two tied at the top).

    Attributes:
        quorum: the votes an answer needed.
        voters: how many voters were asked.
        tally: ``[[answer as JSON text, votes], ...]``, most votes first.
        abstained: voters that gave no valid ballot (failed, or an invalid answer).
    """

    journal_attributes = ("quorum", "voters", "tally", "abstained")

    def __init__(self, message: str, *, quorum: int, voters: int,
                 tally: Sequence[Sequence[Any]] = (), abstained: Sequence[str] = (),
                 **context: Any) -> None:
        super().__init__(message, pattern="vote", **context)
        self.quorum = quorum
        self.voters = voters
        self.tally = [list(t) for t in tally]
        self.abstained = list(abstained)


class DivergenceError(EnsembleError):
    """A mixture's proposers disagreed more than its ``escalate_above`` allows; the
    aggregator was not asked.

    Attributes:
        divergence: the measured divergence (0 = all agree, 1 = nothing in common).
        threshold: ``escalate_above``.
        answers: the proposers' answers (JSON values), by proposer.
    """

    journal_attributes = ("divergence", "threshold", "answers")

    def __init__(self, message: str, *, divergence: float, threshold: float,
                 answers: Mapping[str, Any] | None = None, **context: Any) -> None:
        super().__init__(message, pattern="mixture", **context)
        self.divergence = divergence
        self.threshold = threshold
        self.answers = dict(answers or {})


class RefinementExhaustedError(EnsembleError):
    """The critic accepted no draft of a generator-critic loop within ``max_rounds``.

    Attributes:
        rounds: the rounds made.
        history: ``[{"round", "draft", "verdict"}, ...]``, every draft and critique.
    """

    journal_attributes = ("rounds", "history")

    def __init__(self, message: str, *, rounds: int,
                 history: Sequence[Mapping[str, Any]] = (), **context: Any) -> None:
        super().__init__(message, pattern="refine", **context)
        self.rounds = rounds
        self.history = [dict(h) for h in history]


class ReflexionExhaustedError(EnsembleError):
    """No trial of a Reflexion loop passed its evaluator within ``max_trials``.

    Attributes:
        trials: ``[{"trial", "answer", "evaluation", "reflection"}, ...]``, every trial
            with its evaluation and the reflection written after it.
    """

    journal_attributes = ("trials",)

    def __init__(self, message: str, *, trials: Sequence[Mapping[str, Any]] = (),
                 **context: Any) -> None:
        super().__init__(message, pattern="reflexion", **context)
        self.trials = [dict(t) for t in trials]


class EscalatedError(ResilienceError):
    """A pattern escalated to a human through the dead-letter queue (``escalate="dlq"``):
    the run waits there with the evidence, and ``stalwart dlq`` shows it. The
    ``__cause__`` is the pattern's own error (a :class:`NoQuorumError`, ...).

    Attributes:
        pattern: the pattern that escalated.
        reason: the pattern's error, ``"Type: message"``.
        evidence: what the pattern's error carried (its journal attributes).
    """

    journal_attributes = ("pattern", "reason", "evidence")

    def __init__(self, message: str, *, pattern: str, reason: str,
                 evidence: Mapping[str, Any] | None = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.pattern = pattern
        self.reason = reason
        self.evidence = dict(evidence or {})


class BlackboardError(StalwartError):
    """A blackboard operation could not be done.

    Attributes:
        board: the blackboard's name.
    """

    journal_attributes: ClassVar[tuple[str, ...]] = ("board",)

    def __init__(self, message: str, *, board: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.board = board


class BoardConflictError(BlackboardError):
    """A compare-and-set write lost: the entry is not at the version the writer read
    (another writer changed it first, or it does not exist). Nothing was written; read
    it again and decide.

    Attributes:
        key: the entry's key.
        expected: the version the writer expected (0: that the key does not exist).
        actual: the version the entry is at (0: it does not exist).
    """

    journal_attributes = ("key", "expected", "actual")

    def __init__(self, message: str, *, board: str, key: str, expected: int, actual: int,
                 **context: Any) -> None:
        super().__init__(message, board=board, **context)
        self.key = key
        self.expected = expected
        self.actual = actual


class BoardPatternError(BlackboardError, ConfigurationError):
    """A pattern given to ``read``/``take``/``wait`` is not valid (see
    :class:`~stalwart.Blackboard`): nothing was read or taken.

    Attributes:
        pattern: the pattern, as given (its ``repr``).
    """

    journal_attributes = ("pattern",)

    def __init__(self, message: str, *, board: str, pattern: str, **context: Any) -> None:
        super().__init__(message, board=board, **context)
        self.pattern = pattern


# --- memory --------------------------------------------------------------------------


class MemoryStoreError(StalwartError):
    """An agent's memory (:class:`~stalwart.Memory`) could not be written or searched.

    Attributes:
        memory: the memory's name.
    """

    journal_attributes: ClassVar[tuple[str, ...]] = ("memory",)

    def __init__(self, message: str, *, memory: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.memory = memory


class MemoryQueryError(MemoryStoreError, ValueError):
    """A search that cannot be made: an empty query, ``k`` below 1, an unknown tier.
    Nothing was read. Also a ``ValueError``, as bad arguments are in Python."""


class EmbeddingError(MemoryStoreError):
    """The memory's embedding function returned no vector, a vector with a non-finite
    or non-numeric component, or one whose dimensions differ from the stored entries'
    (the function changed under a memory that holds vectors of the old one).

    Attributes:
        expected, actual: the dimensions stored and the dimensions returned (0 when
            the problem is not the size).
    """

    journal_attributes = ("expected", "actual")

    def __init__(self, message: str, *, memory: str, expected: int = 0, actual: int = 0,
                 **context: Any) -> None:
        super().__init__(message, memory=memory, **context)
        self.expected = expected
        self.actual = actual


# --- agents --------------------------------------------------------------------------


class AgentError(StalwartError):
    """An agent's control loop ended without an answer.

    Attributes:
        agent: the agent's name.
    """

    journal_attributes = ("agent",)

    def __init__(self, message: str, *, agent: str, **context: Any) -> None:
        super().__init__(message, **context)
        self.agent = agent


class MaxIterationsError(AgentError):
    """The agent reached ``max_iterations`` model turns without a final answer."""


class ToolLoopError(AgentError):
    """The model asked for the same tool with the same arguments too many times."""


class RepairBudgetExceededError(AgentError):
    """The model sent more malformed tool calls (bad JSON, wrong types, unknown tools)
    than the agent's repair budget allows."""


class OutputValidationError(AgentError):
    """The final answer did not validate against ``output_type`` after the re-asks
    (an outcome check: it counts as a failure, not as an answer)."""


class CompensationFailedError(ResilienceError):
    """A saga's compensation failed (its retries were exhausted, or it raised an error
    not worth retrying; the ``__cause__``). The run is dead-lettered at that
    compensation's step with the saga's state; ``stalwart dlq retry`` runs it again with
    fresh attempts and the saga goes on undoing.

    Attributes:
        compensation: the compensation that failed.
        done: the saga's completed forward steps.
        undone: the forward steps already compensated, in the order they were.
        not_undone: those still to compensate, the failed one first.
        saga_error: the error that made the saga roll back.
    """

    journal_attributes = ("compensation", "done", "undone", "not_undone", "saga_error")

    def __init__(self, message: str, *, compensation: str, done: list[str],
                 undone: list[str], not_undone: list[str], saga_error: str,
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.compensation = compensation
        self.done = done
        self.undone = undone
        self.not_undone = not_undone
        self.saga_error = saga_error


# --- tools ---------------------------------------------------------------------------


class ToolArgumentsError(StalwartError, ValueError):
    """Arguments for a tool did not validate; ``errors`` is pydantic's list.

    Also a ``ValueError``, as bad arguments are in Python."""

    journal_attributes = ("tool", "errors")

    def __init__(self, tool: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"invalid arguments for tool {tool!r}: {errors}")
        self.tool = tool
        self.errors = errors


class UnsafeArgumentError(StalwartError, ValueError):
    """A safe tool helper (:mod:`stalwart.tools`) refused an argument: a path that
    escapes its root, a command that is not an argv list or not allowed, SQL that is
    not one parameterized statement or does what its tool may not. Not retryable.

    Also a ``ValueError``, as bad arguments are in Python."""


# --- tools from elsewhere: MCP servers, A2A agents -----------------------------------


class ToolSchemaError(ConfigurationError):
    """A tool's schema (its ``parameters``, or an MCP tool's input or output schema) is
    not a valid JSON Schema. Raised when the tool is registered, before any call.

    Attributes:
        tool: the tool's name.
        server: the server that declared it (``""`` for a local tool).
    """

    journal_attributes = ("tool", "server")

    def __init__(self, message: str, *, tool: str, server: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.tool = tool
        self.server = server


class DuplicateToolError(ConfigurationError):
    """Two tools of one registry (two MCP servers, or a server and a local tool) have the
    same name. Give a server a ``prefix=`` to namespace its tools.

    Attributes:
        tool: the name.
        sources: where each came from (``"local"``, ``"mcp:<server>"``).
    """

    journal_attributes = ("tool", "sources")

    def __init__(self, message: str, *, tool: str, sources: Sequence[str],
                 **context: Any) -> None:
        super().__init__(message, **context)
        self.tool = tool
        self.sources = list(sources)


class ToolServerError(StalwartError):
    """A tool server (an MCP server, a remote A2A agent) failed a call.

    Attributes:
        server: the server's name.
        tool: the tool (or remote agent skill) called, when there was one.
    """

    journal_attributes: ClassVar[tuple[str, ...]] = ("server", "tool")

    def __init__(self, message: str, *, server: str, tool: str = "", **context: Any) -> None:
        super().__init__(message, **context)
        self.server = server
        self.tool = tool


class ToolServerUnavailableError(ToolServerError):
    """The server cannot be reached: unreachable at start, or it died or dropped the
    connection during a call. Retryable: the next attempt restarts (stdio) or reconnects
    (HTTP) it."""

    retryable = True


class ToolResultError(ToolServerError):
    """The server answered with a result that is not what its tool declares: not
    matching the tool's output schema, or not an MCP result at all. Retryable (a flaky
    server may answer well next time); a semantic failure for its breaker."""

    retryable = True


class RemoteToolError(ToolServerError):
    """The remote tool ran and reported an error (an MCP result with ``isError``, an A2A
    task that failed or was rejected). Not retryable: the server decided."""

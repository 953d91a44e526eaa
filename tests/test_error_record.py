"""Errors in the journal are data: what is recorded, what is rebuilt, what never is."""

from __future__ import annotations

import inspect
import json
import sys
from typing import Any

import pydantic
import pytest

import stalwart as sw
from stalwart import errors
from stalwart._error_record import ErrorInfo, encode_error, raised_as_replayed, rebuild_error


def roundtrip(exc: BaseException, **context: Any) -> Exception:
    return rebuild_error(ErrorInfo.from_json(encode_error(exc).to_json()), **context)


class PaymentDeclined(Exception):
    journal_attributes = ("code", "retryable")

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = False
        self.secret = "not declared"


class BadInput(ValueError):
    pass


EXAMPLES: dict[type[errors.StalwartError], errors.StalwartError] = {
    errors.StalwartError: errors.StalwartError("root", retryable=True, retry_after=2.5,
                                               run_id="r", step_id="3", attempt=2),
    errors.ConfigurationError: errors.ConfigurationError("bad option"),
    errors.IdempotencyConflictError: errors.IdempotencyConflictError(
        "conflict", workflow="wf", existing_input_hash="a" * 64, input_hash="b" * 64,
        run_id="order-42"),
    errors.SerializationError: errors.SerializationError("cannot store"),
    errors.StoreError: errors.StoreError("down", retryable=True),
    errors.NotAStalwartStoreError: errors.NotAStalwartStoreError("foreign"),
    errors.SchemaVersionError: errors.SchemaVersionError("old", found=1, expected=2),
    errors.StoreCorruptedError: errors.StoreCorruptedError("damaged"),
    errors.LeaseLostError: errors.LeaseLostError("fenced"),
    errors.RunNotFoundError: errors.RunNotFoundError("no run", run_id="x"),
    errors.WorkflowNotFoundError: errors.WorkflowNotFoundError("no wf"),
    errors.NonDeterminismError: errors.NonDeterminismError(
        "changed", run_id="r", step_id="2", recorded="a", current="b"),
    errors.ContextMisuseError: errors.ContextMisuseError("misuse"),
    errors.RestartIntensityError: errors.RestartIntensityError(
        "too many restarts", child="r/3", reason="failed: ValueError: x", restarts=4,
        max_restarts=3, within=5.0),
    errors.SagaAbortedError: errors.SagaAbortedError("rolled back",
                                                     undone=["book hotel", "book flight"]),
    errors.GraphBuildError: errors.GraphBuildError(
        "cannot run", problems=["node 'b' cannot be reached from START"]),
    errors.GraphError: errors.GraphError("bad update", node="agent", step_id="3"),
    errors.GraphStepLimitError: errors.GraphStepLimitError(
        "too many supersteps", max_steps=7, node="spin"),
    errors.HandoffError: errors.HandoffError("no", source="a", target="b", chain=["a"]),
    errors.HandoffContractError: errors.HandoffContractError(
        "broke it", problems=["field 'x': Field required"], source="a", target="b",
        chain=["a"]),
    errors.HandoffLimitError: errors.HandoffLimitError(
        "too long", max_hops=2, source="b", target="c", chain=["a", "b"]),
    errors.HandoffLoopError: errors.HandoffLoopError("loop", source="a", target="b",
                                                     chain=["a", "b", "a"]),
    errors.EnsembleError: errors.EnsembleError("all failed", pattern="mixture"),
    errors.NoQuorumError: errors.NoQuorumError(
        "no quorum", quorum=3, voters=5, tally=[['"a"', 2], ['"b"', 2]], abstained=["c"]),
    errors.DivergenceError: errors.DivergenceError(
        "diverged", divergence=0.5, threshold=0.3, answers={"a": {"x": 1}, "b": {"x": 2}}),
    errors.RefinementExhaustedError: errors.RefinementExhaustedError(
        "none accepted", rounds=2, history=[{"round": 1, "draft": "d",
                                             "verdict": {"accept": False}}]),
    errors.ReflexionExhaustedError: errors.ReflexionExhaustedError(
        "all failed", trials=[{"trial": 1, "answer": 3, "reflection": "add"}]),
    errors.EscalatedError: errors.EscalatedError(
        "escalated", pattern="vote", reason="NoQuorumError: no quorum",
        evidence={"tally": [['"a"', 1]]}),
    errors.BlackboardError: errors.BlackboardError("board", board="facts"),
    errors.BoardConflictError: errors.BoardConflictError(
        "conflict", board="facts", key="k", expected=1, actual=2),
    errors.BoardPatternError: errors.BoardPatternError(
        "bad pattern", board="facts", pattern="'k*['"),
    errors.MemoryStoreError: errors.MemoryStoreError("no board", memory="notes"),
    errors.MemoryQueryError: errors.MemoryQueryError("empty query", memory="notes"),
    errors.EmbeddingError: errors.EmbeddingError("3 dims, not 4", memory="notes",
                                                 expected=4, actual=3),
    errors.SignalTimeoutError: errors.SignalTimeoutError("late", signal="go", run_id="r"),
    errors.ApprovalError: errors.ApprovalError("no", approval="refund", run_id="r"),
    errors.ContextOverflowError: errors.ContextOverflowError(
        "too long", needed=9000, limit=8000, capacity=8192, reserve_output=100, pinned=300),
    errors.ActorNotFoundError: errors.ActorNotFoundError("no actor", actor="Counter"),
    errors.ActorKeyError: errors.ActorKeyError("bad key", actor="Counter"),
    errors.ActorError: errors.ActorError("failed", actor="Counter", key="k1",
                                         message_id="m1", error_type="builtins.ValueError"),
    errors.UnsafeArgumentError: errors.UnsafeArgumentError("escapes the root", run_id="r"),
    errors.ToolSchemaError: errors.ToolSchemaError("bad schema", tool="t", server="s"),
    errors.DuplicateToolError: errors.DuplicateToolError("twice", tool="t",
                                                         sources=["a", "b"]),
    errors.ToolServerError: errors.ToolServerError("broke", server="s", tool="t"),
    errors.ToolServerUnavailableError: errors.ToolServerUnavailableError("down", server="s"),
    errors.ToolResultError: errors.ToolResultError("bad result", server="s", tool="t"),
    errors.RemoteToolError: errors.RemoteToolError("remote failed", server="s", tool="t"),
    errors.ApprovalNotFoundError: errors.ApprovalNotFoundError("no", approval="x"),
    errors.ApprovalConflictError: errors.ApprovalConflictError("final", approval="refund"),
    errors.ApprovalTimeoutError: errors.ApprovalTimeoutError("late", approval="refund",
                                                             run_id="r", step_id="3"),
    errors.RunFailedError: errors.RunFailedError("failed", error_type="builtins.ValueError"),
    errors.RunCancelledError: errors.RunCancelledError("cancelled"),
    errors.ResilienceError: errors.ResilienceError("policy"),
    errors.RetryExhaustedError: errors.RetryExhaustedError(
        "gave up", attempts=3, reason="attempts exhausted",
        errors=(ValueError("first"), errors.RateLimitedError("429", status_code=429,
                                                             retry_after=4.0))),
    errors.CallTimeoutError: errors.CallTimeoutError("slow", timeout=1.5),
    errors.CircuitOpenError: errors.CircuitOpenError("open", key="openai:gpt", state="open",
                                                     retry_after=7.0),
    errors.BulkheadFullError: errors.BulkheadFullError("full", name="pool", reason="queue_full"),
    errors.ThrottledError: errors.ThrottledError("throttled", key="k", retry_after=0.5),
    errors.FallbackExhaustedError: errors.FallbackExhaustedError("all failed", keys=("a", "b")),
    errors.BudgetExceededError: errors.BudgetExceededError(
        "over", budget="max_cost", level="run", limit=1.0, used=1.25),
    errors.CompensationFailedError: errors.CompensationFailedError(
        "cannot undo", compensation="cancel", done=["a", "b"], undone=["b"],
        not_undone=["a"], saga_error="ValueError: no car", run_id="r", step_id="7"),
    errors.OutcomeCheckError: errors.OutcomeCheckError("wrong", key="step:x", reason="empty"),
    errors.AgentError: errors.AgentError("agent", agent="a"),
    errors.MaxIterationsError: errors.MaxIterationsError("max", agent="a"),
    errors.ToolLoopError: errors.ToolLoopError("loop", agent="a"),
    errors.RepairBudgetExceededError: errors.RepairBudgetExceededError("repairs", agent="a"),
    errors.OutputValidationError: errors.OutputValidationError("invalid", agent="a"),
    errors.ModelError: errors.ModelError("model"),
    errors.RateLimitedError: errors.RateLimitedError(
        "429", provider="openai", model="m", status_code=429, retry_after=3.0,
        quota=errors.ProviderQuota(requests_limit=60, requests_remaining=0,
                                   requests_reset=1.5)),
    errors.ProviderOverloadedError: errors.ProviderOverloadedError("503", status_code=503),
    errors.ModelTimeoutError: errors.ModelTimeoutError("timeout", provider="anthropic"),
    errors.ModelConnectionError: errors.ModelConnectionError("reset"),
    errors.MalformedResponseError: errors.MalformedResponseError("garbage"),
    errors.InvalidRequestError: errors.InvalidRequestError("400", status_code=400),
    errors.AuthenticationError: errors.AuthenticationError("401", status_code=401),
    errors.ContentFilterError: errors.ContentFilterError("filtered"),
    errors.ToolArgumentsError: errors.ToolArgumentsError(
        "lookup", [{"loc": ["city"], "msg": "Field required", "type": "missing"}]),
}


def public_state(exc: BaseException) -> dict[str, Any]:
    return {k: (tuple(map(repr, v)) if k == "errors" and isinstance(v, tuple) else v)
            for k, v in vars(exc).items()}


def test_every_error_class_of_stalwart_has_an_example_here() -> None:
    """The round-trip test below covers every error class stalwart defines."""
    classes = {obj for name, obj in vars(errors).items()
               if inspect.isclass(obj) and issubclass(obj, errors.StalwartError)
               and not name.startswith("_") and obj is not errors.RemoteError}
    assert classes == set(EXAMPLES)


@pytest.mark.parametrize("cls", list(EXAMPLES), ids=lambda c: c.__name__)
def test_stalwart_errors_come_back_as_themselves_with_their_attributes(
        cls: type[errors.StalwartError]) -> None:
    """A stalwart error is rebuilt as its own class, message and declared attributes."""
    original = EXAMPLES[cls]
    rebuilt = roundtrip(original)
    assert type(rebuilt) is cls
    assert str(rebuilt) == str(original)
    assert isinstance(rebuilt, errors.StalwartError)
    assert rebuilt.retryable == original.retryable
    expected = public_state(original)
    got = {k: v for k, v in public_state(rebuilt).items() if k in expected}
    assert got == expected


def test_every_public_attribute_of_a_stalwart_error_is_declared() -> None:
    """Nothing an error's constructor sets is left out of the journal."""
    from stalwart._error_record import _declared_names

    for cls, exc in EXAMPLES.items():
        undeclared = set(vars(exc)) - _declared_names(cls) - {"message"}
        assert undeclared == set(), cls.__name__


@pytest.mark.parametrize("exc", [
    ValueError("bad value"), KeyError("missing"), TimeoutError("slow"),
    FileNotFoundError(2, "No such file or directory"), ZeroDivisionError("division by zero"),
    RuntimeError(), NotImplementedError("later")], ids=repr)
def test_builtin_errors_come_back_as_themselves(exc: Exception) -> None:
    """A builtin exception is rebuilt as its type with its arguments."""
    rebuilt = roundtrip(exc)
    assert type(rebuilt) is type(exc)
    assert rebuilt.args == exc.args
    assert str(rebuilt) == str(exc)


def test_a_user_error_comes_back_as_a_remote_error_carrying_its_facts() -> None:
    """Another type is a RemoteError: type name, message, traceback, declared attributes."""
    try:
        raise PaymentDeclined("card declined", 402)
    except PaymentDeclined as exc:
        rebuilt = roundtrip(exc, run_id="r1", step_id="4")
    assert isinstance(rebuilt, sw.RemoteError)
    assert isinstance(rebuilt, sw.StalwartError)
    assert rebuilt.type_name == f"{__name__}.PaymentDeclined"
    assert str(rebuilt) == "card declined"
    assert rebuilt.attributes == {"code": 402, "retryable": False}
    assert "secret" not in rebuilt.attributes  # only what the class declares
    assert "raise PaymentDeclined" in rebuilt.traceback
    assert rebuilt.retryable is False
    assert (rebuilt.run_id, rebuilt.step_id) == ("r1", "4")
    assert rebuilt.matches(PaymentDeclined)
    assert rebuilt.matches("PaymentDeclined")
    assert rebuilt.matches(f"{__name__}.PaymentDeclined")
    assert not rebuilt.matches(ValueError, "Other")


def test_a_remote_error_is_also_its_nearest_builtin_base() -> None:
    """Subclasses of builtins (JSONDecodeError, pydantic's ValidationError, your own)
    still take the ``except ValueError`` branch."""
    class Model(pydantic.BaseModel):
        n: int

    try:
        Model.model_validate({"n": "x"})
    except pydantic.ValidationError as exc:
        validation = exc
    for exc in (json.JSONDecodeError("Expecting value", "", 0), validation,
                BadInput("nope")):
        rebuilt = roundtrip(exc)
        assert isinstance(rebuilt, sw.RemoteError)
        assert isinstance(rebuilt, ValueError), type(exc)
        assert rebuilt.matches(ValueError)
        assert rebuilt.matches(type(exc))
    assert isinstance(roundtrip(KeyErrorChild("k")), KeyError)


class KeyErrorChild(KeyError):
    pass


def test_a_builtin_that_cannot_be_remade_is_a_remote_error_of_its_base() -> None:
    """UnicodeDecodeError's bytes argument is not JSON: it comes back as a RemoteError
    that is still a UnicodeError and a ValueError."""
    try:
        b"\xff".decode()
    except UnicodeDecodeError as exc:
        rebuilt = roundtrip(exc)
    assert isinstance(rebuilt, sw.RemoteError)
    assert isinstance(rebuilt, UnicodeError)
    assert rebuilt.type_name == "builtins.UnicodeDecodeError"


def test_a_cause_is_kept() -> None:
    """``raise X from Y``: the rebuilt X has the rebuilt Y as its __cause__."""
    try:
        try:
            raise KeyError("inner")
        except KeyError as inner:
            raise errors.ModelConnectionError("outer") from inner
    except errors.ModelConnectionError as exc:
        rebuilt = roundtrip(exc)
    assert isinstance(rebuilt.__cause__, KeyError)
    assert rebuilt.__cause__.args == ("inner",)


def test_a_record_names_no_module_that_gets_imported() -> None:
    """The type name in a record is looked up in an allowlist, never imported."""
    name = "stalwart_test_never_imported_module"
    for type_name in (f"{name}.Evil", "os.system", "subprocess.Popen",
                      "stalwart.errors.__class__", "builtins.print",
                      "builtins.BaseException", "builtins.KeyboardInterrupt"):
        record = json.dumps({"type": type_name, "message": "m", "traceback": ""})
        rebuilt = rebuild_error(ErrorInfo.from_json(record))
        assert type(rebuilt) is sw.RemoteError, type_name
        assert rebuilt.type_name == type_name
    assert name not in sys.modules


def test_a_record_sets_only_declared_attributes() -> None:
    """Undeclared names (``__class__``, ``__dict__``...) in a record are ignored, and base
    attributes of the wrong type read as absent."""
    record = json.dumps({
        "type": "stalwart.errors.CircuitOpenError", "message": "m", "traceback": "",
        "attributes": {"__class__": "builtins.int", "__dict__": {}, "key": "k",
                       "state": "open", "retry_after": "soon", "retryable": "yes",
                       "attempt": True}})
    rebuilt = rebuild_error(ErrorInfo.from_json(record))
    assert type(rebuilt) is errors.CircuitOpenError
    assert rebuilt.key == "k"
    assert rebuilt.retry_after is None and rebuilt.attempt is None
    assert rebuilt.retryable is errors.CircuitOpenError.retryable  # the class default


def test_an_old_record_with_a_pickle_is_read_without_it() -> None:
    """Records written before errors were data carried ``"pickled"``: it is ignored."""
    record = json.dumps({"type": "stalwart.errors.CircuitOpenError", "message": "open",
                         "traceback": "tb", "pickled": "gARdlC4="})
    rebuilt = rebuild_error(ErrorInfo.from_json(record))
    assert type(rebuilt) is errors.CircuitOpenError
    assert str(rebuilt) == "open"
    assert rebuilt.key is None and rebuilt.state is None  # declared, not recorded
    assert "pickled" not in ErrorInfo.from_json(record).to_dict()


@pytest.mark.parametrize("text", ["[1]", '"x"', '{"a":' * 5000 + "1" + "}" * 5000, "not json"])
def test_a_record_that_is_not_an_object_is_a_value_error(text: str) -> None:
    """Garbage or a nesting bomb in an error payload is a ValueError, not a crash."""
    with pytest.raises(ValueError):
        ErrorInfo.from_json(text)


def test_fields_of_the_wrong_type_read_as_absent() -> None:
    """A record whose fields have the wrong JSON types is read with defaults."""
    info = ErrorInfo.from_json(json.dumps({"type": 3, "message": None, "attributes": [],
                                           "args": "x", "bases": [1, "builtins.KeyError"],
                                           "cause": "x"}))
    assert (info.type, info.message, info.attributes, info.args, info.bases, info.cause) == (
        "unknown", "", {}, None, ("builtins.KeyError",), None)
    assert isinstance(rebuild_error(info), KeyError)


def test_causes_nest_only_a_few_levels() -> None:
    """A chain of causes is cut after a few levels, written or read."""
    exc: BaseException = ValueError("0")
    for i in range(1, 10):
        try:
            raise ValueError(str(i)) from exc
        except ValueError as new:
            exc = new
    depth, cur = 0, roundtrip(exc)
    while cur.__cause__ is not None:
        depth, cur = depth + 1, cur.__cause__  # type: ignore[assignment]
    assert depth == 3


def test_a_remote_error_travels_on_with_the_same_facts() -> None:
    """Encoding a RemoteError writes the original's record again, not RemoteError's."""
    first = roundtrip(PaymentDeclined("declined", 402))
    again = encode_error(first)
    assert again.type == f"{__name__}.PaymentDeclined"
    assert dict(again.attributes) == {"code": 402, "retryable": False}
    assert again.traceback == encode_error(PaymentDeclined("declined", 402)).traceback


def test_an_unprintable_error_is_still_recorded() -> None:
    """An exception whose __str__ fails is recorded with a placeholder message."""
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    info = encode_error(Unprintable())
    assert info.message == "<unprintable Unprintable>"


def test_the_live_path_raises_what_replay_raises() -> None:
    """A step's builtin or stalwart error is raised as itself the first time; another
    type is raised as the RemoteError a replay will raise."""
    value = ValueError("v")
    assert raised_as_replayed(value, encode_error(value)) is value
    user = PaymentDeclined("no", 1)
    raised = raised_as_replayed(user, encode_error(user), run_id="r", step_id="1")
    assert isinstance(raised, sw.RemoteError)
    assert raised.type_name.endswith("PaymentDeclined")
    assert raised.step_id == "1"

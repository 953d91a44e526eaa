"""The public surface: pinned names, everything importable, closed by default."""

from __future__ import annotations

import enum
import importlib
import inspect

import pytest

import stalwart

PUBLIC = {
    # runtime and workflows
    "Runtime", "RunHandle", "Schedule", "Workflow", "Context", "StepInfo", "current_step",
    "ApprovalError", "ApprovalNotFoundError", "ApprovalConflictError",
    "ApprovalTimeoutError", "ApprovalRequest", "Decision",
    "Actor", "ActorContext", "ActorError", "ActorKeyError", "ActorNotFoundError",
    "RunRecord", "RunStatus", "Store", "SQLiteStore", "PostgresStore",
    # time
    "Clock", "SystemClock", "FakeClock",
    # agents, tools, models
    "Agent", "AgentResult", "Tool", "ToolCall", "ToolArgumentsError", "Model",
    "Grant", "Trust", "Origin", "Sourced", "UnsafeArgumentError", "MCPServer", "ToolRegistry",
    "A2AAgent", "A2AServer",
    "ToolStatus",
    "parse_model", "SimulatedModel", "SimFaults", "FunctionModel", "OpenAIModel",
    "AnthropicModel", "Message", "ModelOptions",
    "ModelRequest", "ModelResponse", "ToolCallRequest", "ToolSpec", "Usage",
    "count_tokens",
    # context windows
    "ContextWindow", "Reject", "Evict", "Summarize", "Page", "Memory", "MemoryHit",
    "ModelLimits",
    # policies, budgets, cost, time travel
    "Policy", "INHERIT", "DEFAULT_POLICY", "PolicyNote", "Retry", "RetryOn", "Timeout",
    "CircuitBreakerConfig", "BulkheadConfig", "RateLimit", "Budget", "Spend", "Price", "PriceTable",
    "UsageReport", "usage_report", "ReplayReport",
    # coordination patterns
    "ChildRun", "ChildOutcome", "ChildSpec", "Saga", "Graph", "CompiledGraph", "START", "END",
    "Team", "TeamResult", "Handoff", "vote", "VoteResult", "mixture", "fan_in", "MixtureResult",
    "refine", "Verdict", "RefineResult", "reflexion", "Evaluation", "ReflexionResult",
    "Blackboard", "BoardEntry", "read_quarantined",
    # errors
    "StalwartError", "ConfigurationError", "IdempotencyConflictError", "SerializationError",
    "StoreError",
    "NotAStalwartStoreError", "SchemaVersionError", "StoreCorruptedError", "LeaseLostError",
    "RunNotFoundError", "WorkflowNotFoundError", "NonDeterminismError", "RemoteError",
    "ContextMisuseError", "ContextOverflowError", "SignalTimeoutError", "RunFailedError",
    "RunCancelledError",
    "RestartIntensityError", "SagaAbortedError", "CompensationFailedError",
    "GraphBuildError", "HandoffError", "HandoffContractError", "HandoffLimitError",
    "HandoffLoopError", "GraphError", "GraphStepLimitError", "EnsembleError",
    "NoQuorumError", "DivergenceError", "RefinementExhaustedError", "ReflexionExhaustedError",
    "EscalatedError", "BlackboardError", "BoardConflictError", "BoardPatternError",
    "MemoryStoreError", "MemoryQueryError", "EmbeddingError",
    "ResilienceError", "RetryExhaustedError", "CallTimeoutError", "CircuitOpenError",
    "BulkheadFullError", "ThrottledError", "FallbackExhaustedError", "BudgetExceededError",
    "BudgetExceeded", "OutcomeCheckError", "ModelError", "RateLimitedError", "ProviderQuota",
    "ProviderOverloadedError", "ModelTimeoutError", "ModelConnectionError",
    "MalformedResponseError", "InvalidRequestError", "AuthenticationError",
    "ContentFilterError", "AgentError", "MaxIterationsError", "ToolLoopError",
    "RepairBudgetExceededError", "OutputValidationError", "Cancelled",
    "ToolSchemaError", "DuplicateToolError", "ToolServerError", "ToolServerUnavailableError",
    "ToolResultError", "RemoteToolError",
}

PACKAGES = ["stalwart", "stalwart.testing", "stalwart.models", "stalwart.policies",
            "stalwart.store", "stalwart.telemetry", "stalwart.patterns", "stalwart.tools",
            "stalwart.remote", "stalwart.memory"]

# Classes meant to be subclassed: the interceptor base of telemetry hooks.
EXTENSION_POINTS = {"Interceptor"}


def test_top_level_names_are_pinned() -> None:
    """stalwart.__all__ changes only on purpose (update this list with the changelog)."""
    assert set(stalwart.__all__) == PUBLIC
    assert len(stalwart.__all__) == len(PUBLIC)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_exists(package: str) -> None:
    """Each package's __all__ names real attributes."""
    module = importlib.import_module(package)
    assert module.__all__, package
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_concrete_public_classes_are_final(package: str) -> None:
    """Closed by default: extend through Protocols, ABCs and the named extension points."""
    module = importlib.import_module(package)
    open_classes = []
    for name in module.__all__:
        obj = getattr(module, name)
        if (not inspect.isclass(obj) or issubclass(obj, BaseException | enum.Enum)
                or getattr(obj, "_is_protocol", False) or inspect.isabstract(obj)
                or name in EXTENSION_POINTS):
            continue
        if not getattr(obj, "__final__", False):
            open_classes.append(name)
    assert open_classes == []


def test_every_error_derives_from_the_root_except_control_flow() -> None:
    """One hierarchy: every exported exception is a StalwartError, but Cancelled."""
    for name in stalwart.__all__:
        obj = getattr(stalwart, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            if name == "Cancelled":
                assert not issubclass(obj, Exception)
            else:
                assert issubclass(obj, stalwart.StalwartError), name


def test_the_package_is_typed() -> None:
    """py.typed ships with the package."""
    import pathlib

    assert (pathlib.Path(stalwart.__file__).parent / "py.typed").is_file()


def test_postgres_store_is_exported_without_importing_psycopg_until_named() -> None:
    """``stalwart.PostgresStore`` is the store class, and ``import stalwart`` alone loads
    neither it nor psycopg (the postgres extra stays optional)."""
    import subprocess
    import sys

    from stalwart.store._postgres import PostgresStore

    assert stalwart.PostgresStore is PostgresStore
    probe = ("import sys, stalwart; print('psycopg' in sys.modules, "
             "'stalwart.store._postgres' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.split() == ["False", "False"]

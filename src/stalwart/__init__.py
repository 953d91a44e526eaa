"""stalwart: durable, observable, rate-limited LLM agents.

Write an ordinary async function; get crash-safe execution from a journal, stable
idempotency keys, durable timers and signals, and the resilience policies of
distributed systems around every model and tool call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._agent import Agent as Agent
from ._agent import AgentResult as AgentResult
from ._clock import Clock as Clock
from ._clock import FakeClock as FakeClock
from ._clock import SystemClock as SystemClock
from ._context import ActorContext as ActorContext
from ._context import Context as Context
from ._context import StepInfo as StepInfo
from ._context import current_step as current_step
from ._runtime import PolicyNote as PolicyNote
from ._runtime import RunHandle as RunHandle
from ._runtime import Runtime as Runtime
from ._schedule import Schedule as Schedule
from .engine._actor import Actor as Actor
from .engine._approval import ApprovalRequest as ApprovalRequest
from .engine._approval import Decision as Decision
from .engine._budget import Budget as Budget
from .engine._budget import Spend as Spend
from .engine._children import ChildOutcome as ChildOutcome
from .engine._children import ChildRun as ChildRun
from .engine._cost import Price as Price
from .engine._cost import PriceTable as PriceTable
from .engine._cost import UsageReport as UsageReport
from .engine._cost import usage_report as usage_report
from .engine._policy import DEFAULT_POLICY as DEFAULT_POLICY
from .engine._policy import INHERIT as INHERIT
from .engine._policy import Policy as Policy
from .engine._privilege import Grant as Grant
from .engine._privilege import Sourced as Sourced
from .engine._privilege import Trust as Trust
from .engine._timetravel import ReplayReport as ReplayReport
from .engine._tools import Tool as Tool
from .engine._tools import ToolCall as ToolCall
from .engine._workflow import Workflow as Workflow
from .errors import ActorError as ActorError
from .errors import ActorKeyError as ActorKeyError
from .errors import ActorNotFoundError as ActorNotFoundError
from .errors import AgentError as AgentError
from .errors import ApprovalConflictError as ApprovalConflictError
from .errors import ApprovalError as ApprovalError
from .errors import ApprovalNotFoundError as ApprovalNotFoundError
from .errors import ApprovalTimeoutError as ApprovalTimeoutError
from .errors import AuthenticationError as AuthenticationError
from .errors import BlackboardError as BlackboardError
from .errors import BoardConflictError as BoardConflictError
from .errors import BoardPatternError as BoardPatternError
from .errors import BudgetExceeded as BudgetExceeded
from .errors import BudgetExceededError as BudgetExceededError
from .errors import BulkheadFullError as BulkheadFullError
from .errors import CallTimeoutError as CallTimeoutError
from .errors import Cancelled as Cancelled
from .errors import CircuitOpenError as CircuitOpenError
from .errors import CompensationFailedError as CompensationFailedError
from .errors import ConfigurationError as ConfigurationError
from .errors import ContentFilterError as ContentFilterError
from .errors import ContextMisuseError as ContextMisuseError
from .errors import ContextOverflowError as ContextOverflowError
from .errors import DivergenceError as DivergenceError
from .errors import DuplicateToolError as DuplicateToolError
from .errors import EmbeddingError as EmbeddingError
from .errors import EnsembleError as EnsembleError
from .errors import EscalatedError as EscalatedError
from .errors import FallbackExhaustedError as FallbackExhaustedError
from .errors import GraphBuildError as GraphBuildError
from .errors import GraphError as GraphError
from .errors import GraphStepLimitError as GraphStepLimitError
from .errors import HandoffContractError as HandoffContractError
from .errors import HandoffError as HandoffError
from .errors import HandoffLimitError as HandoffLimitError
from .errors import HandoffLoopError as HandoffLoopError
from .errors import IdempotencyConflictError as IdempotencyConflictError
from .errors import InvalidRequestError as InvalidRequestError
from .errors import LeaseLostError as LeaseLostError
from .errors import MalformedResponseError as MalformedResponseError
from .errors import MaxIterationsError as MaxIterationsError
from .errors import MemoryQueryError as MemoryQueryError
from .errors import MemoryStoreError as MemoryStoreError
from .errors import ModelConnectionError as ModelConnectionError
from .errors import ModelError as ModelError
from .errors import ModelTimeoutError as ModelTimeoutError
from .errors import NonDeterminismError as NonDeterminismError
from .errors import NoQuorumError as NoQuorumError
from .errors import NotAStalwartStoreError as NotAStalwartStoreError
from .errors import OutcomeCheckError as OutcomeCheckError
from .errors import OutputValidationError as OutputValidationError
from .errors import ProviderOverloadedError as ProviderOverloadedError
from .errors import ProviderQuota as ProviderQuota
from .errors import RateLimitedError as RateLimitedError
from .errors import RefinementExhaustedError as RefinementExhaustedError
from .errors import ReflexionExhaustedError as ReflexionExhaustedError
from .errors import RemoteError as RemoteError
from .errors import RemoteToolError as RemoteToolError
from .errors import RepairBudgetExceededError as RepairBudgetExceededError
from .errors import ResilienceError as ResilienceError
from .errors import RestartIntensityError as RestartIntensityError
from .errors import RetryExhaustedError as RetryExhaustedError
from .errors import RunCancelledError as RunCancelledError
from .errors import RunFailedError as RunFailedError
from .errors import RunNotFoundError as RunNotFoundError
from .errors import SagaAbortedError as SagaAbortedError
from .errors import SchemaVersionError as SchemaVersionError
from .errors import SerializationError as SerializationError
from .errors import SignalTimeoutError as SignalTimeoutError
from .errors import StalwartError as StalwartError
from .errors import StoreCorruptedError as StoreCorruptedError
from .errors import StoreError as StoreError
from .errors import ThrottledError as ThrottledError
from .errors import ToolArgumentsError as ToolArgumentsError
from .errors import ToolLoopError as ToolLoopError
from .errors import ToolResultError as ToolResultError
from .errors import ToolSchemaError as ToolSchemaError
from .errors import ToolServerError as ToolServerError
from .errors import ToolServerUnavailableError as ToolServerUnavailableError
from .errors import UnsafeArgumentError as UnsafeArgumentError
from .errors import WorkflowNotFoundError as WorkflowNotFoundError
from .errors import _install_hint
from .memory import ContextWindow as ContextWindow
from .memory import Evict as Evict
from .memory import Memory as Memory
from .memory import MemoryHit as MemoryHit
from .memory import Page as Page
from .memory import Reject as Reject
from .memory import Summarize as Summarize
from .models import FunctionModel as FunctionModel
from .models import Message as Message
from .models import Model as Model
from .models import ModelLimits as ModelLimits
from .models import ModelOptions as ModelOptions
from .models import ModelRequest as ModelRequest
from .models import ModelResponse as ModelResponse
from .models import Origin as Origin
from .models import SimFaults as SimFaults
from .models import SimulatedModel as SimulatedModel
from .models import ToolCallRequest as ToolCallRequest
from .models import ToolSpec as ToolSpec
from .models import Usage as Usage
from .models import count_tokens as count_tokens
from .models import parse_model as parse_model
from .patterns import END as END
from .patterns import START as START
from .patterns import Blackboard as Blackboard
from .patterns import BoardEntry as BoardEntry
from .patterns import ChildSpec as ChildSpec
from .patterns import CompiledGraph as CompiledGraph
from .patterns import Evaluation as Evaluation
from .patterns import Graph as Graph
from .patterns import Handoff as Handoff
from .patterns import MixtureResult as MixtureResult
from .patterns import RefineResult as RefineResult
from .patterns import ReflexionResult as ReflexionResult
from .patterns import Saga as Saga
from .patterns import Team as Team
from .patterns import TeamResult as TeamResult
from .patterns import Verdict as Verdict
from .patterns import VoteResult as VoteResult
from .patterns import fan_in as fan_in
from .patterns import mixture as mixture
from .patterns import read_quarantined as read_quarantined
from .patterns import refine as refine
from .patterns import reflexion as reflexion
from .patterns import vote as vote
from .policies import BulkheadConfig as BulkheadConfig
from .policies import CircuitBreakerConfig as CircuitBreakerConfig
from .policies import RateLimit as RateLimit
from .policies import Retry as Retry
from .policies import RetryOn as RetryOn
from .policies import Timeout as Timeout
from .remote import A2AAgent as A2AAgent
from .remote import A2AServer as A2AServer
from .remote import MCPServer as MCPServer
from .remote import ToolRegistry as ToolRegistry
from .remote import ToolStatus as ToolStatus
from .store import RunRecord as RunRecord
from .store import RunStatus as RunStatus
from .store import SQLiteStore as SQLiteStore
from .store import Store as Store

if TYPE_CHECKING:
    from .models import AnthropicModel as AnthropicModel
    from .models import OpenAIModel as OpenAIModel
    from .store._postgres import PostgresStore as PostgresStore

__version__ = "0.1.0"

__all__ = [
    # runtime and workflows
    "Runtime",
    "RunHandle",
    "Schedule",
    "Workflow",
    "Context",
    "Actor",
    "ActorContext",
    "ActorError",
    "ActorKeyError",
    "ActorNotFoundError",
    "StepInfo",
    "current_step",
    # agents, tools, models
    "Agent",
    "AgentResult",
    "Tool",
    "ToolCall",
    "ToolArgumentsError",
    "Grant",
    "Trust",
    "Origin",
    "Sourced",
    "UnsafeArgumentError",
    # tools and agents from elsewhere
    "MCPServer",
    "A2AAgent",
    "A2AServer",
    "ToolRegistry",
    "ToolStatus",
    "Model",
    "parse_model",
    "OpenAIModel",
    "AnthropicModel",
    "SimulatedModel",
    "SimFaults",
    "FunctionModel",
    "Message",
    "ModelOptions",
    "ModelRequest",
    "ModelResponse",
    "ToolCallRequest",
    "ToolSpec",
    "Usage",
    "count_tokens",
    # context windows
    "ContextWindow",
    "Reject",
    "Evict",
    "Summarize",
    "Page",
    "Memory",
    "MemoryHit",
    "ModelLimits",
    # resilience policies
    "Policy",
    "INHERIT",
    "DEFAULT_POLICY",
    "PolicyNote",
    "Retry",
    "RetryOn",
    "Timeout",
    "CircuitBreakerConfig",
    "BulkheadConfig",
    "RateLimit",
    # budgets, cost and time travel
    "Budget",
    "Spend",
    "Price",
    "PriceTable",
    "UsageReport",
    "usage_report",
    "ReplayReport",
    # coordination patterns
    "ChildRun",
    "ChildOutcome",
    "ChildSpec",
    "Saga",
    "Graph",
    "CompiledGraph",
    "START",
    "END",
    "Team",
    "read_quarantined",
    "TeamResult",
    "Handoff",
    "vote",
    "VoteResult",
    "mixture",
    "fan_in",
    "MixtureResult",
    "refine",
    "Verdict",
    "RefineResult",
    "reflexion",
    "Evaluation",
    "ReflexionResult",
    "Blackboard",
    "BoardEntry",
    # time
    "Clock",
    "SystemClock",
    "FakeClock",
    # stores
    "Store",
    "SQLiteStore",
    "PostgresStore",
    "RunRecord",
    "RunStatus",
    # errors
    "StalwartError",
    "ConfigurationError",
    "IdempotencyConflictError",
    "SerializationError",
    "StoreError",
    "NotAStalwartStoreError",
    "SchemaVersionError",
    "StoreCorruptedError",
    "LeaseLostError",
    "RunNotFoundError",
    "WorkflowNotFoundError",
    "NonDeterminismError",
    "RemoteError",
    "ContextMisuseError",
    "ContextOverflowError",
    "SignalTimeoutError",
    "ApprovalError",
    "ApprovalNotFoundError",
    "ApprovalConflictError",
    "ApprovalTimeoutError",
    "ApprovalRequest",
    "Decision",
    "RunFailedError",
    "RunCancelledError",
    "RestartIntensityError",
    "SagaAbortedError",
    "GraphBuildError",
    "GraphError",
    "GraphStepLimitError",
    "HandoffError",
    "HandoffContractError",
    "HandoffLimitError",
    "HandoffLoopError",
    "EnsembleError",
    "NoQuorumError",
    "DivergenceError",
    "RefinementExhaustedError",
    "ReflexionExhaustedError",
    "EscalatedError",
    "BlackboardError",
    "BoardConflictError",
    "BoardPatternError",
    "MemoryStoreError",
    "MemoryQueryError",
    "EmbeddingError",
    "ResilienceError",
    "RetryExhaustedError",
    "CallTimeoutError",
    "CircuitOpenError",
    "BulkheadFullError",
    "ThrottledError",
    "FallbackExhaustedError",
    "BudgetExceededError",
    "BudgetExceeded",
    "CompensationFailedError",
    "OutcomeCheckError",
    "ModelError",
    "RateLimitedError",
    "ProviderQuota",
    "ProviderOverloadedError",
    "ModelTimeoutError",
    "ModelConnectionError",
    "MalformedResponseError",
    "InvalidRequestError",
    "AuthenticationError",
    "ContentFilterError",
    "AgentError",
    "MaxIterationsError",
    "ToolLoopError",
    "RepairBudgetExceededError",
    "OutputValidationError",
    "ToolSchemaError",
    "DuplicateToolError",
    "ToolServerError",
    "ToolServerUnavailableError",
    "ToolResultError",
    "RemoteToolError",
    "Cancelled",
]


def __getattr__(name: str) -> Any:
    # The provider adapters load on first use: importing openai and anthropic costs ~1 s.
    if name in ("OpenAIModel", "AnthropicModel"):
        from . import models

        return getattr(models, name)
    # PostgreSQL is an extra: psycopg is imported only by those who name the store.
    if name == "PostgresStore":
        try:
            from .store._postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(
                "stalwart.PostgresStore needs the postgres extra (psycopg): "
                f"{_install_hint('postgres')}") from exc
        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

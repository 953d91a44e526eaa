"""Language models behind one interface: OpenAI, Anthropic, an offline simulator and
models you script (:class:`FunctionModel`).

Everything here is re-exported from the private modules; the provider SDKs are imported
only when an adapter for them is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import PROVIDERS as PROVIDERS
from ._base import Model as Model
from ._base import parse_model as parse_model
from ._failures import parse_retry_after as parse_retry_after
from ._function import FunctionModel as FunctionModel
from ._function import ModelFunction as ModelFunction
from ._limits import MODEL_LIMITS as MODEL_LIMITS
from ._limits import ModelLimits as ModelLimits
from ._limits import model_limits as model_limits
from ._simulated import Latency as Latency
from ._simulated import ScriptedReply as ScriptedReply
from ._simulated import SimFaults as SimFaults
from ._simulated import SimStatistics as SimStatistics
from ._simulated import SimulatedModel as SimulatedModel
from ._tokens import ANTHROPIC_FACTOR as ANTHROPIC_FACTOR
from ._tokens import ESTIMATE_ERROR as ESTIMATE_ERROR
from ._tokens import ApproximateTokenizer as ApproximateTokenizer
from ._tokens import CharClassEstimator as CharClassEstimator
from ._tokens import EncodingLoader as EncodingLoader
from ._tokens import ScaledTokenizer as ScaledTokenizer
from ._tokens import TiktokenTokenizer as TiktokenTokenizer
from ._tokens import Tokenizer as Tokenizer
from ._tokens import count_tokens as count_tokens
from ._tokens import encoding_for as encoding_for
from ._tokens import get_tokenizer as get_tokenizer
from ._tokens import load_encoding as load_encoding
from ._types import MAX_ARGUMENT_BYTES as MAX_ARGUMENT_BYTES
from ._types import MAX_ARGUMENT_DEPTH as MAX_ARGUMENT_DEPTH
from ._types import FinishReason as FinishReason
from ._types import Message as Message
from ._types import ModelOptions as ModelOptions
from ._types import ModelRequest as ModelRequest
from ._types import ModelResponse as ModelResponse
from ._types import Origin as Origin
from ._types import OriginKind as OriginKind
from ._types import Role as Role
from ._types import ToolCallRequest as ToolCallRequest
from ._types import ToolSpec as ToolSpec
from ._types import Usage as Usage
from ._types import parse_tool_arguments as parse_tool_arguments

if TYPE_CHECKING:
    from ._anthropic import AnthropicModel as AnthropicModel
    from ._openai import OpenAIModel as OpenAIModel

__all__ = [
    # the interface
    "Model",
    "parse_model",
    "PROVIDERS",
    # data
    "Message",
    "Origin",
    "OriginKind",
    "Role",
    "ToolSpec",
    "ToolCallRequest",
    "parse_tool_arguments",
    "MAX_ARGUMENT_BYTES",
    "MAX_ARGUMENT_DEPTH",
    "ModelOptions",
    "ModelRequest",
    "ModelResponse",
    "FinishReason",
    "Usage",
    # adapters
    "OpenAIModel",
    "AnthropicModel",
    "SimulatedModel",
    "SimFaults",
    "Latency",
    "ScriptedReply",
    "SimStatistics",
    "FunctionModel",
    "ModelFunction",
    # tokens
    "Tokenizer",
    "TiktokenTokenizer",
    "ApproximateTokenizer",
    "CharClassEstimator",
    "ScaledTokenizer",
    "EncodingLoader",
    "ANTHROPIC_FACTOR",
    "ESTIMATE_ERROR",
    "count_tokens",
    "get_tokenizer",
    "load_encoding",
    "encoding_for",
    # context limits
    "ModelLimits",
    "MODEL_LIMITS",
    "model_limits",
    # helpers
    "parse_retry_after",
]


def __getattr__(name: str) -> Any:
    # The SDK adapters load on first use: importing openai and anthropic costs ~1 s.
    if name == "OpenAIModel":
        from ._openai import OpenAIModel

        return OpenAIModel
    if name == "AnthropicModel":
        from ._anthropic import AnthropicModel

        return AnthropicModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

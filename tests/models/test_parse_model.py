"""Resolving 'provider:name' strings to models."""

from __future__ import annotations

import pytest

import stalwart.models as models
from stalwart.errors import ConfigurationError
from stalwart.models import (
    AnthropicModel,
    Model,
    OpenAIModel,
    SimulatedModel,
    parse_model,
)


async def test_each_prefix_resolves_to_its_adapter() -> None:
    """sim:, openai: and anthropic: build the matching adapter with the given options."""
    sim = parse_model("sim:demo", seed=5)
    assert isinstance(sim, SimulatedModel) and (sim.name, sim.seed) == ("demo", 5)
    oai = parse_model("openai:gpt-4o-mini", api_key="k", base_url="http://127.0.0.1:9/v1")
    ant = parse_model("anthropic:claude-x", api_key="k", base_url="http://127.0.0.1:9")
    assert isinstance(oai, OpenAIModel) and oai.name == "gpt-4o-mini"
    assert isinstance(ant, AnthropicModel) and ant.name == "claude-x"
    assert all(isinstance(m, Model) for m in (sim, oai, ant))
    assert (oai.provider, ant.provider, sim.provider) == ("openai", "anthropic", "sim")
    await oai.aclose()
    await ant.aclose()


def test_instances_pass_through() -> None:
    """A ready model is returned as is; options with it are an error."""
    sim = SimulatedModel("x")
    assert parse_model(sim) is sim
    with pytest.raises(ConfigurationError):
        parse_model(sim, seed=1)


@pytest.mark.parametrize("spec", ["mystery:model", "gpt-4o", "openai:", ":name"])
def test_bad_specs_are_configuration_errors(spec: str) -> None:
    """Unknown prefixes and malformed specs name the known providers."""
    with pytest.raises(ConfigurationError, match="openai, anthropic, sim"):
        parse_model(spec)


def test_not_a_model_is_rejected() -> None:
    """Objects that are neither strings nor models are refused."""
    with pytest.raises(ConfigurationError):
        parse_model(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(("spec", "var"), [("openai:m", "OPENAI_API_KEY"),
                                            ("anthropic:m", "ANTHROPIC_API_KEY")])
def test_missing_api_key_is_configuration_error(
        monkeypatch: pytest.MonkeyPatch, spec: str, var: str) -> None:
    """Without api_key= or the environment variable (and no base_url), construction
    fails clearly."""
    monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(var.replace("API_KEY", "BASE_URL"), raising=False)
    with pytest.raises(ConfigurationError, match=var):
        parse_model(spec)


async def test_environment_supplies_key_and_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_/ANTHROPIC_ API_KEY and BASE_URL configure the adapters."""
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    oai = parse_model("openai:m")
    ant = parse_model("anthropic:m")
    assert "127.0.0.1:9" in repr(oai) and "127.0.0.1:9" in repr(ant)
    assert isinstance(oai, OpenAIModel) and isinstance(ant, AnthropicModel)
    await oai.aclose()
    await ant.aclose()


def test_public_names_are_pinned() -> None:
    """stalwart.models exports exactly these names, all resolvable."""
    assert sorted(models.__all__) == sorted([
        "Model", "parse_model", "PROVIDERS", "Message", "Origin", "OriginKind", "Role",
        "ToolSpec", "ToolCallRequest", "ModelOptions", "ModelRequest", "ModelResponse",
        "FinishReason",
        "Usage", "OpenAIModel", "AnthropicModel", "SimulatedModel", "SimFaults", "Latency",
        "ScriptedReply", "SimStatistics", "Tokenizer", "TiktokenTokenizer",
        "ApproximateTokenizer", "count_tokens", "get_tokenizer", "parse_retry_after",
        "FunctionModel", "ModelFunction", "parse_tool_arguments", "MAX_ARGUMENT_BYTES",
        "MAX_ARGUMENT_DEPTH", "CharClassEstimator", "ScaledTokenizer", "EncodingLoader",
        "ANTHROPIC_FACTOR", "ESTIMATE_ERROR", "load_encoding", "encoding_for", "ModelLimits",
        "MODEL_LIMITS", "model_limits",
    ])
    for name in models.__all__:
        assert getattr(models, name) is not None
    with pytest.raises(AttributeError):
        _ = models.NoSuchThing


def test_unknown_option_is_configuration_error() -> None:
    """An option the adapter does not take is reported as configuration, not TypeError."""
    with pytest.raises(ConfigurationError, match="sim:x"):
        parse_model("sim:x", temperature_of_the_sun=5000)


def test_concrete_classes_are_final() -> None:
    """Public concrete classes are closed for subclassing (extend via the Model protocol)."""
    for cls in (OpenAIModel, AnthropicModel, SimulatedModel, models.FunctionModel,
                models.SimFaults,
                models.Latency, models.Message, models.ModelResponse, models.ToolSpec):
        assert getattr(cls, "__final__", False), cls

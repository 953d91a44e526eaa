"""Fixtures for the model tests: a live FaultServer and adapters pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from stalwart.models import AnthropicModel, Model, OpenAIModel
from stalwart.testing import FaultServer

ModelFactory = Callable[..., Model]


@pytest.fixture
def server() -> Iterator[FaultServer]:
    """A FaultServer on 127.0.0.1, closed after the test."""
    with FaultServer() as srv:
        yield srv


@pytest.fixture(params=["openai", "anthropic"])
def provider(request: pytest.FixtureRequest) -> str:
    """Each HTTP adapter in turn."""
    return str(request.param)


@pytest.fixture
async def make_model(server: FaultServer) -> AsyncIterator[ModelFactory]:
    """Build adapters against ``server``; every one is closed after the test."""
    made: list[OpenAIModel | AnthropicModel] = []

    def factory(provider: str, name: str = "test-model", **kwargs: Any) -> Model:
        kwargs.setdefault("api_key", "test-key")
        kwargs.setdefault("timeout", 5.0)
        model: OpenAIModel | AnthropicModel
        if provider == "openai":
            model = OpenAIModel(name, base_url=server.openai_url, **kwargs)
        else:
            model = AnthropicModel(name, base_url=server.anthropic_url, **kwargs)
        made.append(model)
        return model

    yield factory
    for model in made:
        await model.aclose()

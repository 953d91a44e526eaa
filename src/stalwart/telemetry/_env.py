"""What the environment says about OpenTelemetry, read without importing it."""

from __future__ import annotations

import os

__all__ = ["sdk_disabled"]


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED`` is true: OpenTelemetry is turned off in this process."""
    return (os.environ.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true"

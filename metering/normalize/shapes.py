"""Provider usage objects and OpenTelemetry attributes, mapped onto the canonical token
fields by the table in DESIGN.md."""

from __future__ import annotations

from typing import Any

from metering.normalize.checks import Errors, _count

OTEL_USAGE = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.cache_read.input_tokens": "cache_read_input_tokens",
    "gen_ai.usage.cache_creation.input_tokens": "cache_write_input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
    "gen_ai.usage.reasoning.output_tokens": "reasoning_output_tokens",
}


def _at(usage: dict[str, Any], key: str, *, prefix: str, errors: Errors) -> int:
    """The count `usage[key]`, named `prefix.key` when it is bad."""
    return _count(usage.get(key), name=f"{prefix}.{key}", errors=errors)


def _nested(usage: dict[str, Any], key: str, inner: str, *, prefix: str, errors: Errors) -> int:
    details = usage.get(key)
    if details is None:
        return 0
    if not isinstance(details, dict):
        errors[f"{prefix}.{key}"] = "must be an object"
        return 0
    return _at(details, inner, prefix=f"{prefix}.{key}", errors=errors)


def _usage_tokens(usage: Any, *, provider: str, errors: Errors) -> dict[str, int]:
    """Map a provider's usage object onto the canonical token fields."""
    if not isinstance(usage, dict):
        errors["usage"] = "must be an object"
        return {}
    if isinstance(usage.get("usageMetadata"), dict):
        return _gemini(usage["usageMetadata"], prefix="usage.usageMetadata", errors=errors)
    if "promptTokenCount" in usage or "candidatesTokenCount" in usage:
        return _gemini(usage, prefix="usage", errors=errors)
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return _openai(
            usage, input_name="prompt_tokens", output_name="completion_tokens", errors=errors
        )
    if "input_tokens" in usage or "output_tokens" in usage:
        anthropic = (
            "cache_read_input_tokens" in usage
            or "cache_creation_input_tokens" in usage
            or provider.lower() == "anthropic"
        )
        openai_responses = (
            "input_tokens_details" in usage
            or "output_tokens_details" in usage
            or "total_tokens" in usage
        )
        if anthropic and not openai_responses:
            return _anthropic(usage, errors=errors)
        return _openai(usage, input_name="input_tokens", output_name="output_tokens", errors=errors)
    errors["usage"] = (
        "is not a recognised usage object (OpenAI chat or responses, Anthropic, "
        "Gemini usageMetadata)"
    )
    return {}


def _openai(
    usage: dict[str, Any], *, input_name: str, output_name: str, errors: Errors
) -> dict[str, int]:
    """OpenAI chat (prompt_/completion_tokens) or responses (input_/output_tokens) usage:
    the same shape under two sets of names, details beside each count."""
    return {
        "input_tokens": _at(usage, input_name, prefix="usage", errors=errors),
        "cache_read_input_tokens": _nested(
            usage, f"{input_name}_details", "cached_tokens", prefix="usage", errors=errors
        ),
        "output_tokens": _at(usage, output_name, prefix="usage", errors=errors),
        "reasoning_output_tokens": _nested(
            usage, f"{output_name}_details", "reasoning_tokens", prefix="usage", errors=errors
        ),
    }


def _anthropic(usage: dict[str, Any], *, errors: Errors) -> dict[str, int]:
    # Anthropic's input_tokens excludes cached input; canonical input includes it.
    uncached = _at(usage, "input_tokens", prefix="usage", errors=errors)
    read = _at(usage, "cache_read_input_tokens", prefix="usage", errors=errors)
    write = _at(usage, "cache_creation_input_tokens", prefix="usage", errors=errors)
    return {
        "input_tokens": uncached + read + write,
        "cache_read_input_tokens": read,
        "cache_write_input_tokens": write,
        "output_tokens": _at(usage, "output_tokens", prefix="usage", errors=errors),
    }


def _gemini(usage: dict[str, Any], *, prefix: str, errors: Errors) -> dict[str, int]:
    thoughts = _at(usage, "thoughtsTokenCount", prefix=prefix, errors=errors)
    candidates = _at(usage, "candidatesTokenCount", prefix=prefix, errors=errors)
    return {
        "input_tokens": _at(usage, "promptTokenCount", prefix=prefix, errors=errors),
        "cache_read_input_tokens": _at(
            usage, "cachedContentTokenCount", prefix=prefix, errors=errors
        ),
        # Gemini reports thinking tokens beside the candidates, not inside them.
        "output_tokens": candidates + thoughts,
        "reasoning_output_tokens": thoughts,
    }


def _otel_tokens(attributes: Any, *, errors: Errors) -> dict[str, int]:
    if not isinstance(attributes, dict):
        errors["attributes"] = "must be an object of OpenTelemetry span attributes"
        return {}
    tokens = {
        canonical: _count(attributes.get(name), name=f"attributes.{name}", errors=errors)
        for name, canonical in OTEL_USAGE.items()
    }
    if not any(name in attributes for name in OTEL_USAGE):
        errors["attributes"] = "has no gen_ai.usage.* attributes"
    return tokens

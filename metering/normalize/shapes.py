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


def _nested(usage: dict[str, Any], key: str, inner: str, *, prefix: str, errors: Errors) -> int:
    details = usage.get(key)
    if details is None:
        return 0
    if not isinstance(details, dict):
        errors[f"{prefix}.{key}"] = "must be an object"
        return 0
    return _count(details.get(inner), name=f"{prefix}.{key}.{inner}", errors=errors)


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
        return {
            "input_tokens": _count(
                usage.get("prompt_tokens"), name="usage.prompt_tokens", errors=errors
            ),
            "cache_read_input_tokens": _nested(
                usage, "prompt_tokens_details", "cached_tokens", prefix="usage", errors=errors
            ),
            "output_tokens": _count(
                usage.get("completion_tokens"), name="usage.completion_tokens", errors=errors
            ),
            "reasoning_output_tokens": _nested(
                usage,
                "completion_tokens_details",
                "reasoning_tokens",
                prefix="usage",
                errors=errors,
            ),
        }
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
            # Anthropic's input_tokens excludes cached input; canonical input includes it.
            uncached = _count(usage.get("input_tokens"), name="usage.input_tokens", errors=errors)
            read = _count(
                usage.get("cache_read_input_tokens"),
                name="usage.cache_read_input_tokens",
                errors=errors,
            )
            write = _count(
                usage.get("cache_creation_input_tokens"),
                name="usage.cache_creation_input_tokens",
                errors=errors,
            )
            return {
                "input_tokens": uncached + read + write,
                "cache_read_input_tokens": read,
                "cache_write_input_tokens": write,
                "output_tokens": _count(
                    usage.get("output_tokens"), name="usage.output_tokens", errors=errors
                ),
            }
        return {
            "input_tokens": _count(
                usage.get("input_tokens"), name="usage.input_tokens", errors=errors
            ),
            "cache_read_input_tokens": _nested(
                usage, "input_tokens_details", "cached_tokens", prefix="usage", errors=errors
            ),
            "output_tokens": _count(
                usage.get("output_tokens"), name="usage.output_tokens", errors=errors
            ),
            "reasoning_output_tokens": _nested(
                usage, "output_tokens_details", "reasoning_tokens", prefix="usage", errors=errors
            ),
        }
    errors["usage"] = (
        "is not a recognised usage object (OpenAI chat or responses, Anthropic, "
        "Gemini usageMetadata)"
    )
    return {}


def _gemini(usage: dict[str, Any], *, prefix: str, errors: Errors) -> dict[str, int]:
    thoughts = _count(
        usage.get("thoughtsTokenCount"), name=f"{prefix}.thoughtsTokenCount", errors=errors
    )
    candidates = _count(
        usage.get("candidatesTokenCount"), name=f"{prefix}.candidatesTokenCount", errors=errors
    )
    return {
        "input_tokens": _count(
            usage.get("promptTokenCount"), name=f"{prefix}.promptTokenCount", errors=errors
        ),
        "cache_read_input_tokens": _count(
            usage.get("cachedContentTokenCount"),
            name=f"{prefix}.cachedContentTokenCount",
            errors=errors,
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

"""OpenAPI descriptions of the metering endpoints.

These serializers document the wire format for drf-spectacular only; the ingest
hot path validates with metering.normalize, which is many times faster.
"""

from __future__ import annotations

from rest_framework import serializers

TOKEN_HELP = {
    "input_tokens": "All input tokens, cached included.",
    "cache_read_input_tokens": "Part of input_tokens read from the prompt cache.",
    "cache_write_input_tokens": "Part of input_tokens written to the prompt cache.",
    "output_tokens": "All output tokens, reasoning included.",
    "reasoning_output_tokens": "Part of output_tokens spent on reasoning.",
}


class EventBodyFields(serializers.Serializer):
    model = serializers.CharField(max_length=256, help_text="Model name. Required.")
    provider = serializers.CharField(max_length=128, required=False)
    hardware = serializers.CharField(max_length=128, required=False)
    input_tokens = serializers.IntegerField(
        min_value=0, required=False, help_text=TOKEN_HELP["input_tokens"]
    )
    cache_read_input_tokens = serializers.IntegerField(
        min_value=0, required=False, help_text=TOKEN_HELP["cache_read_input_tokens"]
    )
    cache_write_input_tokens = serializers.IntegerField(
        min_value=0, required=False, help_text=TOKEN_HELP["cache_write_input_tokens"]
    )
    output_tokens = serializers.IntegerField(
        min_value=0, required=False, help_text=TOKEN_HELP["output_tokens"]
    )
    reasoning_output_tokens = serializers.IntegerField(
        min_value=0, required=False, help_text=TOKEN_HELP["reasoning_output_tokens"]
    )
    gpu_seconds = serializers.DecimalField(
        max_digits=24,
        decimal_places=6,
        min_value=0,
        required=False,
        help_text="Number or decimal string, at most 6 decimal places, kept exactly.",
    )
    latency_ms = serializers.IntegerField(min_value=0, required=False)
    properties = serializers.DictField(
        required=False,
        help_text="Flat object, at most 32 keys of up to 64 chars; values: string (≤256 chars), "
        "number or boolean.",
    )
    usage = serializers.DictField(
        required=False,
        help_text="Instead of token fields: the provider's usage object (OpenAI chat or "
        "responses `usage`, Anthropic `usage`, Gemini `usageMetadata`), normalised on ingest.",
    )
    attributes = serializers.DictField(
        required=False,
        help_text="Instead of token fields: OpenTelemetry GenAI span attributes "
        "(gen_ai.usage.*); gen_ai.request.model fills `model` when absent.",
    )


class NativeEventSerializer(EventBodyFields):
    event_id = serializers.CharField(
        max_length=128, help_text="With the key's source, the idempotency key."
    )
    customer = serializers.CharField(max_length=128, help_text="The customer's external id.")
    timestamp = serializers.DateTimeField(
        required=False,
        help_text="RFC 3339 with offset; default: time received. At most 5 minutes in the "
        "future and no older than INFERBILL_MAX_EVENT_AGE_DAYS (35).",
    )


class CloudEventSerializer(serializers.Serializer):
    specversion = serializers.ChoiceField(choices=["1.0"])
    id = serializers.CharField(max_length=128, help_text="With `source`, the idempotency key.")
    source = serializers.CharField(max_length=512)
    type = serializers.CharField(max_length=256)
    subject = serializers.CharField(max_length=128, help_text="The customer's external id.")
    time = serializers.DateTimeField(required=False)
    datacontenttype = serializers.ChoiceField(choices=["application/json"], required=False)
    data = EventBodyFields()


class RejectedEventSerializer(serializers.Serializer):
    index = serializers.IntegerField(help_text="Position of the event in the request.")
    event_id = serializers.CharField(allow_null=True)
    errors = serializers.DictField(
        child=serializers.CharField(), help_text="Field name → what is wrong with it."
    )


class IngestResponseSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Events stored by this request.")
    duplicates = serializers.IntegerField(help_text="Events already stored (retries, repeats).")
    rejected = RejectedEventSerializer(many=True)
    conflicts = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="Duplicates whose content differs from the version stored first, which stands.",
    )


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class UsageMetricsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    cache_read_input_tokens = serializers.IntegerField()
    cache_write_input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    reasoning_output_tokens = serializers.IntegerField()
    gpu_seconds = serializers.CharField(help_text="Decimal string, 6 places.")


class UsageGroupSerializer(UsageMetricsSerializer):
    model = serializers.CharField(required=False)
    hardware = serializers.CharField(required=False)
    day = serializers.DateField(required=False)


class UsageResponseSerializer(serializers.Serializer):
    customer = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    totals = UsageMetricsSerializer()
    groups = UsageGroupSerializer(many=True)

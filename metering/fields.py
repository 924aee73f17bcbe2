"""The names of the canonical usage fields, defined once for every reader and writer.

Token classes follow DESIGN.md (OpenTelemetry GenAI): cache read and write are parts
of input_tokens, reasoning is a part of output_tokens.
"""

from __future__ import annotations

TOKEN_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_write_input_tokens",
    "output_tokens",
    "reasoning_output_tokens",
)
# What an event adds to a usage total: its token counts and GPU time.
SUMMED_FIELDS = (*TOKEN_FIELDS, "gpu_seconds")
# A usage total's metrics: requests counted, then the summed fields.
USAGE_METRICS = ("requests", *SUMMED_FIELDS)

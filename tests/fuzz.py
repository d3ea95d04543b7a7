"""Shared settings of the fuzz tests (every decoder of outside bytes, fed hostile input).

``make test`` runs each with a few hundred examples (a few seconds in all); ``make fuzz`` raises
the count through ``TRIMARAN_FUZZ_EXAMPLES`` for a longer run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

FUZZ_EXAMPLES = int(os.environ.get("TRIMARAN_FUZZ_EXAMPLES", "150"))

fuzz_settings = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

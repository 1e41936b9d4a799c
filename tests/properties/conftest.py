"""Hypothesis settings shared by the property tests.

Every property runs the same examples on every run and every machine
(``derandomize``), keeps no example database on disk, and has no per-example
deadline (the machine is shared and timings are noisy); each test sets its own
``max_examples`` so the suite stays fast.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "convlens",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("convlens")

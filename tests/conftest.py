"""Settings shared by the whole suite.

Hypothesis judges examples by wall time (a 200 ms deadline, a "too slow"
health check). On a shared 2-core CI machine the same example can take ten
times longer than on an idle one, so wall time says nothing about the code
under test: the properties are checked without those timing rules.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "resurgo", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("resurgo")

"""Settings shared by the whole suite.

Hypothesis judges examples by wall time (a 200 ms deadline, a "too slow"
health check). On a shared 2-core CI machine the same example can take ten
times longer than on an idle one, so wall time says nothing about the code
under test: the properties are checked without those timing rules.
"""

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "resurgo", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("resurgo")


@pytest.fixture
def scan():
    """The native directory listing (snapshot/_dirscan.c). Where it should be
    built and is not, the test fails in CI (resurgo.testing.environment)."""
    from resurgo.snapshot import dirscan
    from resurgo.testing.environment import unavailable

    if dirscan.scan is None:
        if dirscan.NATIVE_EXPECTED:
            unavailable("resurgo.snapshot._dirscan is not built (scripts/setup.sh builds it)")
        pytest.skip("no native listing on this platform")
    return dirscan.scan

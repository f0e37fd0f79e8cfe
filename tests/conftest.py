"""Test-wide setup: the hypothesis CI profile and shared fixtures."""

from __future__ import annotations

import os

# numba-cuda tests run on Numba's CUDA simulator unless a GPU run asks otherwise
# (NUMBA_ENABLE_CUDASIM=0); it must be set before numba.cuda is first imported
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
# Numba (and numba-cuda's copy of its config) refuses a NUMBA_NUM_THREADS that differs from
# the pool it launched; pinned once here, an in-process CLI call or a monkeypatch restoring
# the variable cannot make a later test's compile raise
os.environ.setdefault("NUMBA_NUM_THREADS", str(len(os.sched_getaffinity(0))))  # Numba's default
# tests hold the compiled kernels to the reference: a first call on the fast tier would run
# the reference itself (tests/backends/numba_cpu/test_tiers.py turns the tier on)
os.environ.setdefault("CONVFORGE_TIERED", "0")
# the suite compiles hundreds of generated kernels, and LLVM's optimisation and code emission
# of each kernel's linked callees are most of that: like `cargo test`, the tests build less
# optimised code. O1, not O0: at O0 dead references to Python objects survive and Numba
# refuses to cache those kernels. NUMBA_OPT is in the kernel cache's stamp, so these builds
# never reach an O3 process; tests/backends/numba_cpu/test_optimized_build.py runs the O3
# build, and NUMBA_OPT=3 runs the whole suite on it
os.environ.setdefault("NUMBA_OPT", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,  # a fixed seed: the same examples on every run
    deadline=None,
    max_examples=25,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", deadline=None, max_examples=100)
# the fuzz suite by hand (tests/fuzz/conftest.py): random seeds, and tests/fuzz scales its
# max_examples up (harness.examples); other tests run 100 examples
settings.register_profile(
    "fuzz-long",
    deadline=None,
    max_examples=100,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


#: every backend the shared test tables run on; numba-cuda runs its own suite with tiny
#: shapes (the simulator runs each thread in Python) and joins the cross-backend suite
BACKENDS = ["reference", "numba-cpu"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param

"""The suite builds kernels at LLVM O1 (``NUMBA_OPT=1``, tests/conftest.py); this test
runs the build users get, LLVM at full optimisation, in a process of its own.

The models cover the generated kernels' families: LeNet-5 (conv -> activation -> pool
fused forward and backward, direct and im2col convs, linear, loss) and a conv -> BN ->
ReLU block on Winograd with batch norm fused in training. Gradients and inference are
held to the reference in float64.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import convforge as cf
    from convforge import optim
    from convforge.models.zoo import lenet5
    from tests.conv_algorithms import vgg_block

    for model, shape in ((lenet5(), (1, 28, 28)), (vgg_block(), (3, 17, 15))):
        x = np.random.default_rng(0).standard_normal((3, *shape))
        y = np.arange(3) % 4
        cf.manual_seed(0)
        steps = {
            backend: cf.compile_train(
                model, (None, *shape), optimizer=optim.SGD(lr=0.1), backend=backend,
                dtype="float64", tiered=False,
            )
            for backend in ("numba-cpu", "reference")
        }
        loss, grads = steps["numba-cpu"].gradients(x, y)
        ref_loss, ref_grads = steps["reference"].gradients(x, y)
        assert abs(loss - ref_loss) <= 1e-10 * abs(ref_loss), (loss, ref_loss)
        for key, value in ref_grads.items():
            np.testing.assert_allclose(grads[key], value, rtol=1e-9, atol=1e-11, err_msg=key)
        model.eval()
        got = cf.compile(model, (None, *shape), backend="numba-cpu", dtype="float64")(x)
        want = cf.compile(model, (None, *shape), backend="reference", dtype="float64")(x)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    print("optimised build agrees")
    """
)


def test_the_optimised_build_agrees_with_the_reference():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_OPT"}  # Numba's default: 3
    root = str(Path(__file__).resolve().parents[3])  # the checkout: `tests.conv_algorithms` imports from it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, cwd=root, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "optimised build agrees" in done.stdout

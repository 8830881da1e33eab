"""pytest set-up shared by the tests and the doctests (``--doctest-modules`` over jaxrnn/).

The ``>>>`` examples of a module that needs an optional package (PyTorch for
``jaxrnn.interop``, Flax and Equinox for the wrappers) are not collected when that
package is missing, the way the tests that need it are skipped. The doctests run with
JAX's default float32, although ``tests/conftest.py`` enables float64 for the tests that
share their worker process.
"""

import importlib.util

import pytest

_NEEDS = {
    "jaxrnn/interop.py": "torch",
    "jaxrnn/integrations/flax_nnx.py": "flax",
    "jaxrnn/integrations/equinox.py": "equinox",
}

collect_ignore = [path for path, package in _NEEDS.items() if importlib.util.find_spec(package) is None]


@pytest.fixture(autouse=True)
def _doctests_in_float32(request):
    """The docstrings' examples show JAX's defaults (float32); tests/conftest.py turns on
    float64 for the whole process, so switch it off around each doctest."""
    from _pytest.doctest import DoctestItem

    if not isinstance(request.node, DoctestItem):
        yield
        return
    import jax

    enabled = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", enabled)

"""Each example reaches the accuracy its docstring states for a shortened run.

The docstring of every script under ``examples/`` ends its target sentence with
``>= A after ``--steps N````; this test runs ``main(["--steps", N, "--seed", "0"])``
in-process (no interpreter start-up) and checks the returned accuracy, and that the
printed ``accuracy: ...`` line says the same.
"""

import ast
import importlib.util
import pathlib
import re
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SHORT_RUN = re.compile(r">= ([0-9.]+) after ``--steps (\d+)``")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"jaxrnn_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (equinox modules) look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, needs",
    [
        ("classify", None),
        ("tagging", None),
        ("generate", None),
        ("seq2seq", None),
        ("custom_cell", None),
        ("flax_classify", "flax"),
        ("equinox_classify", "equinox"),
    ],
)
def test_example_reaches_stated_accuracy(name, needs, capsys):
    if needs:
        pytest.importorskip(needs)
    module = _load(name)
    found = SHORT_RUN.findall(module.__doc__)
    assert len(found) == 1, f"{name}.py must state one '>= A after ``--steps N``' target"
    threshold, steps = float(found[0][0]), found[0][1]
    acc = module.main(["--steps", steps, "--seed", "0"])
    printed = re.findall(r"^accuracy: ([0-9.]+)$", capsys.readouterr().out, flags=re.M)
    assert printed and abs(float(printed[-1]) - acc) < 1e-4
    assert acc >= threshold, f"{name}: accuracy {acc:.4f} after {steps} steps, expected >= {threshold}"


def test_examples_have_help_and_targets():
    names = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert {"classify", "tagging", "generate", "seq2seq"} <= set(names)
    for name in names:
        doc = _load_doc(name)
        assert "Target:" in doc and SHORT_RUN.search(doc), f"{name}.py states no target accuracy"


def _load_doc(name):
    return ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))

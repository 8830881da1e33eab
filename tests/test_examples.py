"""Each example, run as a user runs it (``python examples/NAME.py --quick``), reaches the
accuracy its docstring states for the short run.

The docstring of every script under ``examples/`` ends its target sentence with
``>= A after ``--steps N````; ``--quick`` is that short run. This test starts the script
in a fresh interpreter with ``--quick --seed 0`` and checks that it exits with status 0,
trains ``N`` steps and prints ``accuracy: X`` with ``X >= A``.
"""

import ast
import pathlib
import re

import pytest

from test_scripts import run_script

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
SHORT_RUN = re.compile(r">= ([0-9.]+) after ``--steps (\d+)``")
# Examples that need an optional package.
NEEDS = {"flax_classify": "flax", "equinox_classify": "equinox"}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.py")))
def test_example_quick_run_reaches_stated_accuracy(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    found = SHORT_RUN.findall(_load_doc(name))
    assert len(found) == 1, f"{name}.py must state one '>= A after ``--steps N``' target"
    threshold, steps = float(found[0][0]), int(found[0][1])
    out = run_script(EXAMPLES / f"{name}.py", "--quick", "--seed", "0").stdout
    trained = re.findall(r"^trained (\d+) steps", out, flags=re.M)
    assert trained == [str(steps)], f"{name}.py --quick must train the {steps} steps its docstring names, printed {trained}"
    printed = re.findall(r"^(?:accuracy|skill): ([0-9.]+)$", out, flags=re.M)
    assert printed, f"{name}.py printed no 'accuracy: X' (or, for a regression, 'skill: X') line"
    acc = float(printed[-1])
    assert acc >= threshold, f"{name}: accuracy {acc:.4f} after {steps} steps, expected >= {threshold}"


def test_examples_have_help_and_targets():
    names = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert {"classify", "tagging", "generate", "seq2seq"} <= set(names)
    for name in names:
        doc = _load_doc(name)
        assert "Target:" in doc and SHORT_RUN.search(doc), f"{name}.py states no target accuracy"
        assert '"--quick"' in (EXAMPLES / f"{name}.py").read_text(), f"{name}.py has no --quick mode"


def _load_doc(name):
    return ast.get_docstring(ast.parse((EXAMPLES / f"{name}.py").read_text()))

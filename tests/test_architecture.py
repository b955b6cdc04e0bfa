"""The shape of the code: one declaration per hyperparameter, no import cycle,
a curated public surface with numpydoc docstrings whose examples run."""

from __future__ import annotations

import ast
import inspect
import pathlib
import re
import subprocess
import sys

import pytest

import sklearn_protopnet
from sklearn_protopnet import ProtoPNetClassifier, backbones
from sklearn_protopnet._cli import _build_parser
from sklearn_protopnet._params import HYPERPARAMETERS, Hyperparameters, check_value

PACKAGE = pathlib.Path(sklearn_protopnet.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


# ----------------------------------------------------------------------------
# hyperparameters: one declaration, everything else derived from it
# ----------------------------------------------------------------------------
def test_signature_is_the_declaration_and_init_only_assigns():
    signature = inspect.signature(ProtoPNetClassifier.__init__)
    params = list(signature.parameters.values())[1:]
    assert [p.name for p in params] == [h.name for h in HYPERPARAMETERS]
    for p, h in zip(params, HYPERPARAMETERS):
        assert p.kind is p.POSITIONAL_OR_KEYWORD and p.default is h.default, p.name
    sentinels = {h.name: object() for h in HYPERPARAMETERS}
    clf = ProtoPNetClassifier(**sentinels)
    assert vars(clf) == sentinels  # a plain assignment of every argument, nothing else
    assert clf.get_params(deep=False) == sentinels


def test_constraints_and_training_record_are_the_declaration():
    names = [h.name for h in HYPERPARAMETERS]
    assert list(ProtoPNetClassifier._parameter_constraints) == names
    assert [f for f in Hyperparameters.__dataclass_fields__] == names
    clf = ProtoPNetClassifier(prototypes_per_class=3, lr_backbone=0.5)
    hp = Hyperparameters.of(clf)
    assert hp.prototypes_per_class == 3 and hp.lr_backbone == 0.5
    assert hp.as_dict() == clf.get_params(deep=False)


def _documented_parameters(doc: str) -> list[tuple[str, str, str]]:
    """(name, type, default) of each entry of the Parameters section."""
    section = doc.split("Parameters\n    ----------\n", 1)[1].split("\n\n", 1)[0]
    entries = re.findall(r"^    (\w+) : (.+), default=(.+)$", section, flags=re.M)
    headers = re.findall(r"^    \S.*$", section, flags=re.M)
    assert len(entries) == len(headers), "a Parameters entry without 'default='"
    return entries


def test_docstring_documents_every_parameter_with_its_default():
    entries = _documented_parameters(ProtoPNetClassifier.__doc__)
    assert [name for name, _, _ in entries] == [h.name for h in HYPERPARAMETERS]
    for (name, _, default), h in zip(entries, HYPERPARAMETERS):
        if name == "memory_budget":
            assert default == "2 GiB" and h.default == 2 * 1024**3
        else:
            assert default == (f'"{h.default}"' if isinstance(h.default, str)
                               else repr(h.default)), name
        assert len(h.doc.split()) >= 4, f"{name} has no description"
    # the text under each entry is its declaration's
    doc = " ".join(ProtoPNetClassifier.__doc__.split())
    for h in HYPERPARAMETERS:
        assert " ".join(h.doc.split()) in doc, h.name


def test_command_line_offers_the_declared_options_and_defaults():
    fit = _build_parser()._subparsers._group_actions[0].choices["fit"]
    by_dest = {a.dest: a for a in fit._actions}
    offered = [h for h in HYPERPARAMETERS if h.cli is not None]
    assert {h.name for h in HYPERPARAMETERS} - {h.name for h in offered} == {"verbose"}
    for h in offered:
        action = by_dest[h.name]
        assert h.option in action.option_strings
        assert action.default == h.command_line_default, h.name
    # parsed values arrive under the parameters' own names, ready for the estimator
    args = fit.parse_args(["some/folder", "--prototypes-per-class", "4", "--no-augment",
                           "--lr-backbone", "auto", "--validation-fraction", "0.2"])
    assert (args.prototypes_per_class, args.augment, args.lr_backbone,
            args.validation_fraction) == (4, False, "auto", 0.2)


@pytest.mark.parametrize("value, ok", [(95.0, True), (0, True), (100, True), ("auto", True),
                                        (-1, False), (101, False), ("95", False)])
def test_one_check_serves_fit_and_explain(value, ok):
    """``explain(box_percentile=...)`` is checked by the declaration's constraint."""
    if ok:
        check_value("box_percentile", value)
    else:
        with pytest.raises(ValueError, match="box_percentile"):
            check_value("box_percentile", value, "explain")


# ----------------------------------------------------------------------------
# modules: no import cycle, each importable on its own
# ----------------------------------------------------------------------------
def _package_imports(module: str) -> set[str]:
    """The package modules ``module`` imports anywhere (also inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # from . import x: a module, or a name of __init__
                found |= {a.name if a.name in MODULES else "__init__" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "sklearn_protopnet"):
            parts = node.module.split(".")
            found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("sklearn_protopnet."):
                    found.add(a.name.split(".")[1])
    return found - {module}


def test_the_import_graph_is_acyclic():
    graph = {m: _package_imports(m) for m in MODULES}
    assert all(dep in graph for deps in graph.values() for dep in deps)
    state: dict[str, str] = {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", "import cycle: " + " -> ".join(path + [m])
        state[m] = "open"
        for dep in sorted(graph[m]):
            visit(dep, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])
    # the layering a reader relies on
    assert "_classifier" not in set().union(*(graph[m] for m in MODULES if m != "__init__"
                                             and m not in ("_cli", "_demo")))
    assert "_explain" not in graph["_render"]
    assert not graph["_network"] and not graph["_maths"]


def test_every_module_imports_on_its_own():
    code = (
        "import importlib, sys\n"
        f"for name in {MODULES!r}:\n"
        "    for key in [k for k in sys.modules if k.startswith('sklearn_protopnet')]:\n"
        "        del sys.modules[key]\n"
        "    full = 'sklearn_protopnet' + ('' if name == '__init__' else '.' + name)\n"
        "    importlib.import_module(full)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------
# the public surface
# ----------------------------------------------------------------------------
# functions and classes; the data constants (__version__, REFERENCE_SETTINGS)
# are documented where they are defined
PUBLIC = [getattr(sklearn_protopnet, n) for n in sklearn_protopnet.__all__
          if callable(getattr(sklearn_protopnet, n))] + [
    getattr(backbones, n) for n in backbones.__all__]


def _own_members(obj):
    """``obj`` and, for a class, the methods and properties it defines itself."""
    yield obj.__qualname__, obj
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name.startswith("_") and name != "__init__":
                continue
            if name == "__init__" or isinstance(member, (staticmethod, classmethod)):
                member = getattr(obj, name)
            if callable(member) or isinstance(member, property) or hasattr(member, "func"):
                yield f"{obj.__qualname__}.{name}", member


def test_public_names_resolve_to_public_objects():
    assert sorted(sklearn_protopnet.__all__) == sorted(set(sklearn_protopnet.__all__))
    for obj in PUBLIC:
        assert not obj.__name__.startswith("_")
    for name in ("NearestPatches", "CellGeometry", "PrototypeParts", "Evidence",
                 "Explanation"):
        assert name in sklearn_protopnet.__all__
    assert set(backbones.__all__) == {"SmallCNN", "list_backbones"}


@pytest.mark.parametrize("qualname, member",
                         [m for obj in PUBLIC for m in _own_members(obj)],
                         ids=lambda v: v if isinstance(v, str) else "")
def test_public_docstrings_are_numpydoc(qualname, member):
    target = member.fget if isinstance(member, property) else getattr(member, "func", member)
    doc = inspect.getdoc(target)
    assert doc and len(doc.split()) >= 3, f"{qualname} has no docstring"
    if inspect.isclass(target):
        if target is ProtoPNetClassifier:
            assert "Parameters\n----------" in doc and "Examples\n--------" in doc
        elif hasattr(target, "__dataclass_fields__"):
            assert "Attributes\n----------" in doc
        return
    if isinstance(member, property) or hasattr(member, "func") or qualname.endswith(
            "__init__"):
        return
    signature = inspect.signature(target)
    params = [p for p in signature.parameters if p not in ("self", "cls")]
    if params:
        assert "Parameters\n----------" in doc, f"{qualname} documents no parameters"
        section = doc.split("Parameters\n----------\n", 1)[1]
        for p in params:
            assert re.search(rf"^{p}\b|, {p}\b", section, flags=re.M), f"{qualname}: {p}"
    returns = signature.return_annotation
    if returns not in (inspect.Signature.empty, None, "None"):
        assert "Returns\n-------" in doc or "Yields\n------" in doc, qualname
        assert not re.search(r"\b_\w+", str(returns)), f"{qualname} returns a private type"


# The docstring examples run in tests/test_doctests.py, one test per docstring,
# with a check that every public name has one.

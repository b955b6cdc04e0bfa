"""Every public function, class and estimator method documents a runnable
example, and every docstring example in the package runs (one test each)."""

from __future__ import annotations

import doctest
import importlib
import inspect
import pathlib
import re

import numpy as np
import pytest
import torch

import sklearn_protopnet
from sklearn_protopnet import ProtoPNetClassifier, backbones

PACKAGE = pathlib.Path(sklearn_protopnet.__file__).parent
MODULES = ["sklearn_protopnet"] + [f"sklearn_protopnet.{p.stem}"
                                   for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _docstring_tests():
    finder, seen, found = doctest.DocTestFinder(exclude_empty=True), set(), []
    for name in MODULES:
        for test in finder.find(importlib.import_module(name)):
            if test.examples and (test.filename, test.lineno) not in seen:
                seen.add((test.filename, test.lineno))
                found.append(test)
    return sorted(found, key=lambda t: t.name)


DOCTESTS = _docstring_tests()


def _public_callables():
    """(qualified name, object) of every public function and class, and of every
    public method of the estimator."""
    names = [(f"sklearn_protopnet.{n}", getattr(sklearn_protopnet, n))
             for n in sklearn_protopnet.__all__ if callable(getattr(sklearn_protopnet, n))]
    names += [(f"sklearn_protopnet.backbones.{n}", getattr(backbones, n))
              for n in backbones.__all__]
    for name, member in vars(ProtoPNetClassifier).items():
        if name.startswith("_") or isinstance(member, property) or not getattr(
                member, "__module__", "").startswith("sklearn_protopnet"):
            continue  # set_fit_request and friends are scikit-learn's
        names.append((f"ProtoPNetClassifier.{name}", getattr(ProtoPNetClassifier, name)))
    return names


@pytest.mark.parametrize("qualname, obj", _public_callables(), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_every_public_name_has_a_runnable_example(qualname, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------\n>>> " in doc, f"{qualname} has no Examples section"
    # the example is found by the doctest collection below, so it runs
    target = getattr(obj, "__func__", obj)
    assert any(t.docstring is not None and t.docstring.strip() == (target.__doc__ or "").strip()
               for t in DOCTESTS), f"{qualname}: its example is not collected"


@pytest.mark.parametrize("test", DOCTESTS, ids=lambda t: t.name.removeprefix(
    "sklearn_protopnet."))
def test_docstring_example_runs(test, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    with torch.random.fork_rng():
        torch.manual_seed(0)
        np.random.seed(0)
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        test.globs = dict(test.globs)  # each run starts from the module's globals
        report: list[str] = []
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted == len(test.examples)


def test_the_collection_finds_the_examples():
    """The collection is not empty by accident: the estimator's, the geometry's
    and the quality functions' examples are among those that run."""
    names = {t.name.rsplit(".", 1)[-1] for t in DOCTESTS}
    assert {"ProtoPNetClassifier", "fit", "explain", "centre", "list_backbones",
            "evidence_stability", "SmallCNN", "Explanation"} <= names


API_PAGE = PACKAGE.parent / "docs" / "api.md"


def _api_page_test():
    """The page's ``{eval-rst}`` blocks as one doctest (each block ends where
    its fence does, so an expected output ends there too)."""
    text = API_PAGE.read_text(encoding="utf-8")
    blocks = re.findall(r"^```\{eval-rst\}\n(.*?)^```", text, flags=re.S | re.M)
    return doctest.DocTestParser().get_doctest("\n\n".join(blocks), {}, "docs/api.md",
                                               str(API_PAGE), 0)


def test_public_data_names_have_a_runnable_example_on_the_api_page():
    """Names that are not callables (REFERENCE_SETTINGS, __version__) carry no
    docstring of their own: their examples live on the API page, run here."""
    data = [n for n in sklearn_protopnet.__all__ if not callable(getattr(sklearn_protopnet, n))]
    test = _api_page_test()
    sources = "".join(example.source for example in test.examples)
    for name in data + ["__version__"]:
        assert f"py:data:: sklearn_protopnet.{name}" in API_PAGE.read_text(encoding="utf-8")
        assert name in sources, f"{name} has no example on docs/api.md"
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)
    assert result.attempted == len(test.examples) > 0

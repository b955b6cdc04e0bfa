"""Distances accurate near zero, seen from the estimator: a prototype's
similarity to its own source patch, and predictions that do not depend on
which other images share the batch."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn_protopnet._network import SIMILARITY_EPSILON

SOURCE_SIMILARITY = float(np.log(1.0 / SIMILARITY_EPSILON))


def test_every_prototype_is_at_similarity_log_1e4_of_its_source_patch(fitted, bar_files):
    paths, _ = bar_files
    S = fitted.transform(paths)
    m = fitted.n_prototypes_
    own = S[fitted.prototype_source_index_, np.arange(m)]
    np.testing.assert_allclose(own, SOURCE_SIMILARITY, rtol=0, atol=1e-4)
    # and it is the largest similarity any image has to that prototype
    assert (S.max(axis=0) <= own + 1e-9).all()


@pytest.mark.parametrize("batch_size", [1, 3, 7])
def test_probabilities_do_not_depend_on_the_batch(fitted, bar_files, batch_size):
    """The images include every prototype's source, where the log similarity is
    steepest, and images that are no prototype's source."""
    paths, _ = bar_files
    reference = fitted.predict_proba(paths)  # batches of fitted.batch_size (16)
    sources = sorted(set(fitted.prototype_source_index_.tolist()))
    others = [i for i in range(len(paths)) if i not in set(sources)][:4]
    chosen = np.array(sources + others)
    order = np.random.default_rng(batch_size).permutation(chosen)
    clf = fitted.__class__(**fitted.get_params())
    clf.__dict__.update({k: v for k, v in vars(fitted).items() if k.endswith("_")})
    clf.set_params(batch_size=batch_size)
    proba = clf.predict_proba([paths[i] for i in order])
    np.testing.assert_allclose(proba, reference[order], rtol=0, atol=1e-5)
    # one image at a time, each alone in its batch
    alone = np.vstack([fitted.predict_proba([paths[i]]) for i in order[:3]])
    np.testing.assert_allclose(alone, reference[order[:3]], rtol=0, atol=1e-5)


def test_cosine_prototypes_are_unit_patches_and_survive_the_model_file(bar_data, tmp_path):
    """With cosine similarity every prototype is a unit-length copy of its source
    cell (similarity 1, the largest any image has), the evidence still adds up
    to the logit, and a saved model rebuilds the add-on without its sigmoid."""
    import torch

    from sklearn_protopnet import ProtoPNetClassifier

    from .conftest import tiny_classifier

    images, labels = bar_data
    clf = tiny_classifier(similarity="cosine").fit(images, labels)
    S = clf.transform(images)
    m = clf.n_prototypes_
    own = S[clf.prototype_source_index_, np.arange(m)]
    np.testing.assert_allclose(own, 1.0, rtol=0, atol=1e-6)
    assert (S.max(axis=0) <= own + 1e-9).all() and (S >= -1 - 1e-9).all()
    torch.testing.assert_close(clf.module_.prototypes.norm(dim=1), torch.ones(m))
    e = clf.explain(images[:1], top_k=None)[0]
    assert np.isclose(sum(item.contribution for item in e.evidence), e.logit())
    clf.save(tmp_path / "cosine.protopnet")
    loaded = ProtoPNetClassifier.load(tmp_path / "cosine.protopnet")
    assert not any(isinstance(layer, torch.nn.Sigmoid) for layer in loaded.module_.add_on)
    np.testing.assert_array_equal(loaded.transform(images), S)

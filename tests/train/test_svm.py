"""The softmax + SVM ensemble of the TMI 2017 seed: fitting, plain-array storage, fusion."""

import numpy as np
import pytest

from attnmel.errors import AttnMelError
from attnmel.train.svm import FeatureSVM, average_with_svm, fit_feature_svm


def _blobs(n=120, d=6, k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centres = rng.normal(0, 4, (k, d))
    return centres[y] + rng.normal(0, 1, (n, d)), y


@pytest.mark.parametrize("k", [2, 3])
def test_svm_separates_separable_features_and_gives_probabilities(k):
    x, y = _blobs(k=k)
    svm = fit_feature_svm(x, y, num_classes=k)
    p = svm.predict_proba(x)
    assert p.shape == (len(y), k)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p.argmax(axis=1) == y).mean() > 0.95


def test_svm_round_trips_through_npz_without_pickle(tmp_path):
    x, y = _blobs()
    svm = fit_feature_svm(x, y, num_classes=2)
    svm.save(tmp_path / "svm.npz")
    back = FeatureSVM.load(tmp_path / "svm.npz")
    assert np.array_equal(back.predict_proba(x), svm.predict_proba(x))
    with np.load(tmp_path / "svm.npz", allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)


def test_corrupt_svm_file_is_a_clear_error(tmp_path):
    (tmp_path / "svm.npz").write_bytes(b"garbage")
    with pytest.raises(AttnMelError, match="svm.npz: not a readable SVM file"):
        FeatureSVM.load(tmp_path / "svm.npz")


def test_fusion_is_the_mean_of_both_probabilities():
    x, y = _blobs()
    svm = fit_feature_svm(x, y, num_classes=2)
    soft = np.tile([[0.9, 0.1]], (len(y), 1))
    assert np.allclose(average_with_svm(soft, x, svm), (soft + svm.predict_proba(x)) / 2)


def test_class_missing_from_training_gets_zero_probability():
    x, y = _blobs(k=2)
    svm = fit_feature_svm(x, y, num_classes=3)
    p = svm.predict_proba(x)
    assert p.shape[1] == 3 and np.all(p[:, 2] == 0)

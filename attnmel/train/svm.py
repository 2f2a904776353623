"""The TMI 2017 seed's ensemble: average the softmax with an SVM fitted on the penultimate features.

The SVM is a linear SVM on standardised features, calibrated to probabilities by a logistic regression on
its decision values (Platt scaling). It is stored as plain arrays in ``RUN_DIR/svm.npz`` (loaded with
``allow_pickle=False``), never as a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attnmel.errors import file_error
from attnmel.io import atomic_path


@dataclass
class FeatureSVM:
    """A calibrated linear SVM as arrays: ``predict_proba`` gives (N, K) probabilities."""

    mean: np.ndarray
    scale: np.ndarray
    svm_coef: np.ndarray
    svm_intercept: np.ndarray
    cal_coef: np.ndarray
    cal_intercept: np.ndarray
    classes: np.ndarray
    num_classes: int

    def decision(self, feats: np.ndarray) -> np.ndarray:
        z = (feats - self.mean) / self.scale
        d = z @ self.svm_coef.T + self.svm_intercept
        return d if d.ndim == 2 else d[:, None]

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        logits = self.decision(feats) @ self.cal_coef.T + self.cal_intercept
        if logits.shape[1] == 1:  # binary logistic regression: one column for classes[1]
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            cols = np.stack([1.0 - p1, p1], axis=1)
        else:
            logits = logits - logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            cols = e / e.sum(axis=1, keepdims=True)
        out = np.zeros((feats.shape[0], self.num_classes))
        out[:, self.classes] = cols  # classes absent from training keep probability 0
        return out

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in self.__dict__.items()})

    @classmethod
    def load(cls, path: Path) -> FeatureSVM:
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
            data["num_classes"] = int(data["num_classes"])
            return cls(**data)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise file_error(path, f"not a readable SVM file ({e.__class__.__name__})") from None


def fit_feature_svm(feats: np.ndarray, labels: np.ndarray, num_classes: int, C: float = 1.0,
                    seed: int = 0) -> FeatureSVM:
    """Fit the standardised linear SVM and its Platt calibration on training features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    scaler = StandardScaler().fit(feats)
    z = scaler.transform(feats)
    svc = LinearSVC(C=C, random_state=seed, max_iter=5000).fit(z, labels)
    d = svc.decision_function(z)
    d = d if d.ndim == 2 else d[:, None]
    cal = LogisticRegression(max_iter=1000).fit(d, labels)
    return FeatureSVM(scaler.mean_, scaler.scale_, np.atleast_2d(svc.coef_), np.atleast_1d(svc.intercept_),
                      np.atleast_2d(cal.coef_), np.atleast_1d(cal.intercept_), cal.classes_.astype(int),
                      int(num_classes))


def average_with_svm(softmax: np.ndarray, feats: np.ndarray, svm: FeatureSVM) -> np.ndarray:
    """The seed's fusion: the mean of the network's and the SVM's probabilities."""
    return 0.5 * (softmax + svm.predict_proba(feats))

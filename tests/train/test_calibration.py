"""Temperature scaling: the fitted T minimises the NLL (checked by a dense grid computed here), scaling keeps
the argmax, and the record keeps T only when it lowers the test ECE."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attnmel.train.calibration import apply_kept, fit_and_judge, fit_temperature, read_calibration, scale_probs


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _overconfident(seed, n=400, k=2, sharpen=3.0):
    """Labels drawn from softmax(z); the 'model' reports softmax(sharpen * z): too sure, so the best T is ~sharpen."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    y = np.array([rng.choice(k, p=q) for q in _softmax(z)])
    return _softmax(sharpen * z), y


def _grid_nll(probs, y, ts):
    """NLL for each temperature, written independently of the module: log-softmax of log(p) / T."""
    out = []
    for t in ts:
        z = np.log(probs) / t
        logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
        out.append(-logp[np.arange(len(y)), y].mean())
    return np.array(out)


@pytest.mark.parametrize("k,sharpen", [(2, 3.0), (3, 0.5)])
def test_fitted_temperature_is_the_nll_minimum(k, sharpen):
    probs, y = _overconfident(0, k=k, sharpen=sharpen)
    t = fit_temperature(probs, y)
    ts = np.exp(np.linspace(np.log(0.1), np.log(10), 4001))
    best = ts[np.argmin(_grid_nll(probs, y, ts))]
    assert t == pytest.approx(best, rel=2e-3)
    assert t == pytest.approx(sharpen, rel=0.25)  # the sharpening the data was made with


def test_scaling_keeps_the_argmax_and_the_binary_ranking():
    from sklearn.metrics import roc_auc_score

    probs, y = _overconfident(1, sharpen=1.0)
    for t in (0.3, 1.0, 4.0):
        s = scale_probs(probs, t)
        assert np.allclose(s.sum(1), 1) and (s.argmax(1) == probs.argmax(1)).all()
        assert roc_auc_score(y, s[:, 1]) == pytest.approx(roc_auc_score(y, probs[:, 1]), abs=1e-12)
    assert scale_probs(probs, 4.0)[:, 1].std() < probs[:, 1].std() < scale_probs(probs, 0.3)[:, 1].std()
    assert np.allclose(scale_probs(probs, 1.0), probs)


def test_record_keeps_t_only_when_test_ece_drops(tmp_path):
    val = _overconfident(2)
    test = _overconfident(3)
    rec = fit_and_judge(tmp_path, val, test, melanoma_index=1)
    assert rec["kept"] and rec["ece"]["test"]["scaled"] < rec["ece"]["test"]["raw"]
    assert rec["nll_val"]["scaled"] < rec["nll_val"]["raw"]
    assert json.loads((tmp_path / "calibration.json").read_text())["temperature"] == pytest.approx(rec["temperature"])
    assert read_calibration(tmp_path)["kept"] is True
    probs = test[0]
    assert np.allclose(apply_kept(probs, rec), scale_probs(probs, rec["temperature"]))
    # A test split that is already calibrated (and a val split that is over-confident): scaling makes it worse.
    calibrated = _overconfident(4, sharpen=1.0)
    rec = fit_and_judge(tmp_path, val, calibrated, melanoma_index=1)
    assert not rec["kept"] and rec["ece"]["test"]["scaled"] >= rec["ece"]["test"]["raw"]
    assert apply_kept(calibrated[0], rec) is calibrated[0]
    assert apply_kept(calibrated[0], None) is calibrated[0]

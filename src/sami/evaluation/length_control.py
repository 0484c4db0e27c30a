"""AlpacaEval 2's length-controlled win rate (`length_controlled_minimal`), fitted with scikit-learn.

The GLM of Dubois et al. 2024 (arXiv 2404.04475) in the form alpaca_eval ships as `glm_name =
"length_controlled_minimal"` (`alpaca_eval/metrics/glm_winrate.py`), written again here because alpaca_eval
downloads its instruction-difficulty table from a hub at import of that path and brings pandas and patsy:

* target: the preference for the evaluated model in [0, 1] (a tie is 0.5);
* feature: `tanh((baseline_length − model_length) / sd)`, `sd` the *sample* standard deviation (ddof = 1) of that
  difference over the items, plus a constant column (the model indicator); no other intercept;
* fit: `LogisticRegressionCV` with an L1 penalty, `solver="liblinear"`, `random_state=123`, `fit_intercept=False`,
  the default grid of 10 values of C, and 5-fold `GroupKFold` cross-validation scored by the log loss against the
  fractional targets. Fractional targets are fitted as alpaca_eval does: every item appears twice, once with
  label 1 and weight `p` and once with label 0 and weight `1 − p`, the two copies in the same fold;
* LC = the mean predicted preference with the length feature at 0 (equal lengths) = `sigmoid(θ_model)`.

Degenerate cases, reported in the notes: fewer items than folds (LC is None); all length differences equal
(`sd = 0`, the feature is set to 0 and LC is the L1-shrunk raw rate); every item won, or every item lost (the
penalty keeps θ finite; LC lands near 1 or 0, at the largest C of the grid).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

N_SPLITS = 5
RANDOM_STATE = 123


def _logloss_against_targets(y_true, y_pred, *, true_prob, true_sample_weight=None) -> float:
    """Log loss of `y_pred` against the fractional targets behind the duplicated rows (alpaca_eval's scorer)."""
    target = np.where(np.asarray(y_true) == 1, true_prob, 1 - np.asarray(true_prob))
    y_pred = np.clip(y_pred, 1e-15, 1 - 1e-15)
    loss = target * np.log(y_pred) + (1 - target) * np.log(1 - y_pred)
    if true_sample_weight is not None:
        loss = loss * true_sample_weight
    return float(-np.mean(loss))


@contextlib.contextmanager
def _quiet_stderr():
    """Silence liblinear's C-level notice (on stderr) for a fold without label-0 weight (a fold of all wins)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def length_feature(model_lengths: np.ndarray, baseline_lengths: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """`tanh((baseline − model) / sd)` with the sample standard deviation; zeros (and a note) when sd is 0."""
    delta = np.asarray(baseline_lengths, dtype=float) - np.asarray(model_lengths, dtype=float)
    sd = float(delta.std(ddof=1)) if delta.size > 1 else 0.0
    if sd == 0.0 or not np.isfinite(sd):
        return np.zeros_like(delta), ["length-controlled: all length differences are equal; length feature set to 0"]
    return np.tanh(delta / sd), []


def length_controlled_win_rate(
    preferences: np.ndarray, model_lengths: np.ndarray, baseline_lengths: np.ndarray
) -> tuple[float | None, list[str]]:
    """AlpacaEval 2's LC win rate of the evaluated model, in [0, 1], and notes on degenerate fits."""
    # scikit-learn takes ~1.4 s to import; the report and winrate read this module
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GroupKFold

    p = np.asarray(preferences, dtype=float)
    n = p.size
    if n < N_SPLITS:
        return None, [f"length-controlled: needs at least {N_SPLITS} judgments for its {N_SPLITS}-fold fit, got {n}"]
    feature, notes = length_feature(model_lengths, baseline_lengths)
    if np.all(p == 1.0) or np.all(p == 0.0):
        notes.append("length-controlled: every item has the same outcome; the fit is held finite by its L1 penalty")
    x = np.stack([feature, np.ones(n)], axis=1)
    # Each item twice: label 1 with weight p, label 0 with weight 1 − p; `true_prob` is the target of the copy.
    x_dup = np.concatenate([x, x])
    y_dup = np.concatenate([np.ones(n), np.zeros(n)])
    true_prob = np.concatenate([p, 1 - p])
    groups = np.concatenate([np.arange(n), np.arange(n)])
    with sklearn.config_context(enable_metadata_routing=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        scorer = make_scorer(
            _logloss_against_targets, response_method="predict_proba", greater_is_better=False
        ).set_score_request(true_prob=True, true_sample_weight=True)
        model = LogisticRegressionCV(
            cv=GroupKFold(n_splits=N_SPLITS),
            scoring=scorer,
            l1_ratios=(1.0,),
            solver="liblinear",
            fit_intercept=False,
            random_state=RANDOM_STATE,
        )
        model.set_fit_request(sample_weight=True)
        with _quiet_stderr():
            model.fit(
                x_dup, y_dup, sample_weight=true_prob, groups=groups, true_prob=true_prob, true_sample_weight=None
            )
    at_equal_length = np.stack([np.zeros(n), np.ones(n)], axis=1)
    return float(model.predict_proba(at_equal_length)[:, 1].mean()), notes

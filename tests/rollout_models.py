"""Test-only estimators for the canary tests: a wrapper whose scores fail, come late or are shifted. A deployment trusts
such a class through `MLOPS_NB_TRUSTED_TYPES`; the tests set it for themselves and for the servers they start."""
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

TRUSTED = 'rollout_models.Faulty'

class Faulty(ClassifierMixin, BaseEstimator):
    "The fitted pipeline `base`, but: raising on rows whose `column` exceeds `fail_above`, sleeping `delay` s, or scores + `shift`."
    def __init__(self, base=None, delay=0.0, shift=0.0, fail_above=None, column='amount'):
        self.base, self.delay, self.shift, self.fail_above, self.column = base, delay, shift, fail_above, column

    def fit(self, X, y):
        self.base.fit(X, y); self.classes_ = self.base.classes_
        return self

    def predict_proba(self, X):
        if self.fail_above is not None and (X[self.column].astype(float) > self.fail_above).any():
            raise RuntimeError(f"{self.column} above {self.fail_above}: this version has a bug")
        if self.delay: time.sleep(self.delay)
        s = np.clip(self.base.predict_proba(X)[:, 1] + self.shift, 0, 1)
        return np.c_[1 - s, s]

    def predict(self, X): return (self.predict_proba(X)[:, 1] >= 0.5).astype('int64')

"""``recaug tune``: the augmentation-policy search on the validation split (docs/tuning.md).

``space`` (config → trial parameters → policy → config layer), ``evaluate`` (one trial: augment with
the pure Arrow engine, short training, validation score), ``study`` (Optuna: pruning, resumable
journal storage, parallel workers, full re-runs), ``history`` (the ``tune_trials`` table, best
policy, proxy-to-full rank correlation), ``report`` (``report.md`` and ``scores.png`` without
training), ``runner`` (the command end to end and the test confirmation).
"""

"""The trial history of ``recaug tune``: one row per trial (and one for the real-only baseline), the
best policy, the proxy-to-full rank correlation, and the ``tune_trials`` Delta table.

Rows (:func:`trial_records`, pure): the study's trials with their parameters, policy, proxy score
(the trial's value; the last reported validation score of a pruned trial), best epoch, cap hit,
seconds and state, joined with the full re-runs (``study.rerun_in_full``) by policy key. The
baseline row has ``trial = -1`` and state ``BASELINE``. :func:`write_history` writes them through the
project's ``Warehouse`` (partitioned by ``study``, this study's partition replaced, so other studies'
rows stay); :func:`read_history` reads them back without Spark (``--report``).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, Sequence

import pyarrow as pa

TABLE = "tune_trials"
COLUMNS = (
    ("study", pa.string()),
    ("trial", pa.int64()),
    ("state", pa.string()),
    ("params", pa.string()),
    ("policy", pa.string()),
    ("policy_key", pa.string()),
    ("proxy_score", pa.float64()),
    ("proxy_best_epoch", pa.int64()),
    ("proxy_cap_hit", pa.bool_()),
    ("proxy_seconds", pa.float64()),
    ("pruned_at_epoch", pa.int64()),
    ("full_score", pa.float64()),
    ("full_best_epoch", pa.int64()),
    ("full_cap_hit", pa.bool_()),
    ("full_seconds", pa.float64()),
    ("retry_of", pa.int64()),
    ("config_hash", pa.string()),
)
SCHEMA = pa.schema(COLUMNS)


def trial_records(study, full_runs: Mapping[str, Any], *, study_name: str, config_hash: str) -> list[dict]:
    """One dict per trial (``COLUMNS``), trial order, then the baseline's row (``trial`` -1)."""
    from recaug_spark.tune.space import Policy

    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        proxy = (
            t.value
            if t.value is not None
            else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        )
        full = full_runs.get(attrs.get("policy_key"))
        rows.append(
            _row(
                study_name,
                t.number,
                t.state.name,
                json.dumps(t.params, sort_keys=True),
                attrs.get("policy"),
                attrs.get("policy_key"),
                proxy,
                attrs.get("best_epoch"),
                attrs.get("cap_hit"),
                attrs.get("seconds"),
                attrs.get("pruned_at_epoch"),
                full.result if full else None,
                attrs.get("retry_of"),
                config_hash,
            )
        )
    baseline = full_runs.get(Policy((), None).key())
    if baseline is not None:
        rows.append(
            _row(
                study_name,
                -1,
                "BASELINE",
                "{}",
                baseline.policy.describe(),
                baseline.policy.key(),
                None,
                None,
                None,
                None,
                None,
                baseline.result,
                None,
                config_hash,
            )
        )
    return rows


def _row(
    study, trial, state, params, policy, key, proxy, best_epoch, cap_hit, seconds, pruned_at, full, retry, config_hash
) -> dict:
    full = full or {}
    return {
        "study": study,
        "trial": trial,
        "state": state,
        "params": params,
        "policy": policy,
        "policy_key": key,
        "proxy_score": _number(proxy),
        "proxy_best_epoch": best_epoch,
        "proxy_cap_hit": cap_hit,
        "proxy_seconds": seconds,
        "pruned_at_epoch": pruned_at,
        "full_score": _number(full.get("score")),
        "full_best_epoch": full.get("best_epoch"),
        "full_cap_hit": full.get("cap_hit"),
        "full_seconds": full.get("seconds"),
        "retry_of": retry,
        "config_hash": config_hash,
    }


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def best_record(records: Sequence[dict]) -> dict:
    """The best trial: highest full score among the trials re-run in full, else highest proxy score
    among complete trials (the earliest trial on ties)."""
    trials = [r for r in records if r["trial"] >= 0]
    full = [r for r in trials if r["full_score"] is not None]
    pool = full or [r for r in trials if r["state"] == "COMPLETE" and r["proxy_score"] is not None]
    if not pool:
        raise ValueError("no complete trial yet: nothing to choose from")
    score = "full_score" if full else "proxy_score"
    return min(pool, key=lambda r: (-r[score], r["trial"]))


def baseline_verdict(records: Sequence[dict]) -> str | None:
    """A sentence on whether the best policy beats the real-only baseline on validation (both under
    the full budget), or None when either has no full score. A search always has a best trial; when
    it does not beat training on real rows alone, the recommendation is no augmentation."""
    best = best_record(records)
    baseline = next((r for r in records if r["trial"] < 0), None)
    if baseline is None or best["full_score"] is None or not baseline["full_score"]:
        return None
    change = (best["full_score"] - baseline["full_score"]) / baseline["full_score"]
    if change > 0:
        return (f"it beats the real-only baseline on validation ({change:+.2%}, full budget, one seed; "
                "`--confirm` says whether it holds on test)")
    return (f"it does not beat the real-only baseline on validation ({change:+.2%}, full budget, one seed): "
            "no policy tried here is shown to help; the recommendation is to train on real rows only")


def rank_correlation(records: Sequence[dict]) -> dict[str, float]:
    """Spearman's rank correlation between proxy and full scores over the distinct policies that have
    both (``scipy.stats.spearmanr``): ``{"rho", "p", "n"}``; rho NaN with fewer than 3 policies."""
    from scipy.stats import spearmanr

    pairs = {}
    for r in records:
        if (
            r["trial"] >= 0
            and r["proxy_score"] is not None
            and r["full_score"] is not None
            and r["state"] == "COMPLETE"
        ):
            pairs.setdefault(r["policy_key"], (r["proxy_score"], r["full_score"]))
    n = len(pairs)
    if n < 3:
        return {"rho": math.nan, "p": math.nan, "n": n}
    proxy, full = zip(*pairs.values())
    result = spearmanr(proxy, full)
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": n}


def history_table(records: Sequence[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(records), schema=SCHEMA)


def write_history(warehouse, records: Sequence[dict], study_name: str):
    """Replace this study's partition of ``tune_trials`` with ``records`` (one atomic commit).

    The rows go to Spark as Python values of the Arrow schema, not through pandas: pandas turns an
    integer column with a null (a pruned trial's best epoch) into floats that Spark's LongType refuses."""
    rows = [tuple(row[name] for name, _ in COLUMNS) for row in history_table(records).to_pylist()]
    frame = warehouse.spark.createDataFrame(rows, _spark_schema())
    exists = warehouse.exists(TABLE)
    return warehouse.write(
        TABLE,
        frame,
        mode="overwrite",
        partition_by=["study"],
        replace_partitions={"study": [study_name]} if exists else None,
    )


def _spark_schema():
    from pyspark.sql import types as T

    kinds = {
        pa.string(): T.StringType(),
        pa.int64(): T.LongType(),
        pa.float64(): T.DoubleType(),
        pa.bool_(): T.BooleanType(),
    }
    return T.StructType(
        [T.StructField(name, kinds[kind], nullable=name not in ("study", "trial", "state")) for name, kind in COLUMNS]
    )


def read_history(uri: str, study_name: str) -> list[dict]:
    """This study's rows of the ``tune_trials`` table at ``uri``, without Spark, in trial order."""
    from recaug_spark.delta import table_exists
    from recaug_spark.train.data import iter_batches, pinned_files

    if not table_exists(uri):
        raise FileNotFoundError(f"no {TABLE} table at {uri}: run `recaug tune` first")
    files = [f for f in pinned_files(uri) if f.partition_value("study") == study_name]
    names = [name for name, _ in COLUMNS if name != "study"]
    rows = [dict(row, study=study_name) for batch in iter_batches(files, names) for row in batch.to_pylist()]
    return sorted(rows, key=lambda r: (r["trial"] < 0, r["trial"]))

"""The item side of the augment stage: real items plus augmented variants, with provenance.

Fit once with Spark (Merlin's fit/transform split): item popularity in the training sequences
(long-tail targeting, joined onto the items as a flag), the catalog's vocabulary (to restrict the
WordNet lexicon to the catalog's own words) and per-category feature statistics (for the noise
operators). Then transform: items are hash-partitioned by ``item_id`` and each partition runs the
pure operators of :mod:`recaug_spark.augment.item_ops` in ``mapInArrow``, through the engine
(``recaug_spark.augment.engine.augment_item_record_batch``). Randomness is keyed per item, so the
output does not depend on partitioning.

The table ``augmented_items`` is partitioned by ``operator_chain``: one chain's rows (an ablation)
or the real rows (``operator_chain`` = ``schemas.REAL_CHAIN``) are read without scanning the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recaug_spark.augment.arrow_io import ITEM_COLUMNS, output_schema
from recaug_spark.augment.engine import LONG_TAIL_COLUMN, augment_item_record_batch, compile_item_branches
from recaug_spark.augment.item_ops import FeatureStat, ItemState, feature_values
from recaug_spark.augment.registry import ITEM_REGISTRY, build_item
from recaug_spark.config import ItemAugmentConfig
from recaug_spark.generators.artifacts import latest
from recaug_spark.runs import RunContext
from recaug_spark.schemas import AUGMENTED_ITEMS
from recaug_spark.text.lexicon import Lexicon, wordnet_lexicon
from recaug_spark.text.tokens import catalog_vocabulary

TABLE = "augmented_items"


# --------------------------------------------------------------------------------------------
# Fit (Spark, on the driver)


@dataclass(frozen=True)
class CatalogProfile:
    """What one pass over the catalog fits: its size, vocabulary and per-category feature statistics."""

    items: int
    vocabulary: frozenset[str]  # lower-case token cores of titles and descriptions (empty unless asked)
    stats: dict  # (category, feature) -> FeatureStat, as item_ops.fit_feature_stats (empty unless asked)


_TOKEN = "\0token"  # feature names of the profile's long form that are not features
_ROWS = "\0rows"


def profile_catalog(items: DataFrame, *, vocabulary: bool = True, features: bool = True) -> CatalogProfile:
    """Fit everything the item operators need in one Spark job over ``items``.

    Each task turns its Arrow batches into long rows (category, feature, value, integral): numeric
    features (``item_ops.feature_values``), distinct words, and its row count; one aggregation
    groups them. Values are collected sorted, so the statistics do not depend on partitioning.
    """
    from pyspark.sql import functions as F

    schema = T.StructType([T.StructField("category", T.StringType()), T.StructField("feature", T.StringType()),
                           T.StructField("value", T.DoubleType()), T.StructField("integral", T.BooleanType())])
    arrow_schema = pa.schema([("category", pa.string()), ("feature", pa.string()), ("value", pa.float64()),
                              ("integral", pa.bool_())])

    def long_form(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            frame = batch.to_pandas()
            parts = [pd.DataFrame({"category": [None], "feature": [_ROWS], "value": [float(len(frame))],
                                   "integral": [True]})]
            if features:
                parts.append(feature_values(frame))
            if vocabulary:
                words = sorted(catalog_vocabulary(frame["title"].tolist() + frame["description"].tolist()))
                parts.append(pd.DataFrame({"category": None, "feature": [f"{_TOKEN}{w}" for w in words],
                                           "value": np.nan, "integral": True}))
            yield pa.RecordBatch.from_pandas(pd.concat(parts, ignore_index=True), schema=arrow_schema,
                                             preserve_index=False)

    grouped = (items.select("title", "description", "category", "price", "attributes").mapInArrow(long_form, schema)
               .groupBy("category", "feature")
               .agg(F.sort_array(F.collect_list("value")).alias("values"), F.bool_and("integral").alias("integral")))
    rows, words, stats = 0, set(), {}
    for row in grouped.collect():
        if row.feature == _ROWS:
            rows = int(sum(row["values"]))
        elif row.feature.startswith(_TOKEN):
            words.add(row.feature[len(_TOKEN):])
        else:
            stats[row.category, row.feature] = FeatureStat.from_values(row["values"], row.integral)
    return CatalogProfile(rows, frozenset(words), stats)


def flag_long_tail(items: DataFrame, sequences: DataFrame, share: float, total: int | None = None) -> DataFrame:
    """``items`` with a boolean ``_long_tail``: the least popular ``share`` of the ``total`` items
    (default: counted) by training interactions (never interacted with: 0; ties broken by item id)."""
    from pyspark.sql import functions as F

    total = items.count() if total is None else total
    tail_size = int(np.floor(share * total))
    counts = sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").agg(
        F.count(F.lit(1)).alias("_interactions"))
    ranked = items.select("item_id").join(counts, "item_id", "left").fillna(0, ["_interactions"])
    tail = ranked.orderBy("_interactions", "item_id").limit(tail_size).select("item_id", F.lit(True).alias(LONG_TAIL_COLUMN))
    return items.join(tail, "item_id", "left").withColumn(LONG_TAIL_COLUMN, F.coalesce(F.col(LONG_TAIL_COLUMN), F.lit(False)))


# --------------------------------------------------------------------------------------------
# Transform


def augment_items(items: DataFrame, sequences: DataFrame | None, cfg: ItemAugmentConfig, seed: int, run_id: str,
                  config_hash: str, *, partitions: int | None = None, lexicon: Lexicon | None = None,
                  models_dir: str | None = None) -> DataFrame:
    """Real items ∪ their augmented variants, as a DataFrame of :data:`AUGMENTED_ITEMS`.

    ``sequences`` (the training sequences) give the popularity for long-tail targeting; they may be
    None when no branch targets the long tail. ``lexicon`` replaces the fitted WordNet lexicon
    (tests, custom domains). ``partitions``: items are hash-partitioned by ``item_id`` into this many
    (default ``spark.sql.shuffle.partitions``). Real rows carry the input items unchanged.
    ``models_dir``: where generator operators (``attribute_generate``, ``describe_expand``) find
    the latest version of their model (``recaug fit``); a missing one fails here, before Spark runs.

    Example::

        out = augment_items(warehouse.read("items"), warehouse.read("sequences"), cfg.augment.items,
                            seed=42, run_id="r1", config_hash=cfg.hash)
        out.where("operator_chain = 'synonym_replace'").select("item_id", "title").show()
    """
    from pyspark.sql import functions as F

    items = _item_columns(items)
    configured = cfg.branches if cfg.enabled else ()
    long_tail = any(cfg.long_tail_only if b.long_tail_only is None else b.long_tail_only for b in configured)
    if long_tail and sequences is None:
        raise ValueError("augment.items.long_tail_only needs the training sequences (item popularity); "
                         "pass `sequences` or set long_tail_only: false")
    state, total = fit_item_state(items, configured, lexicon=lexicon, models_dir=models_dir, profile=long_tail)
    lexicon_name = state.lexicon.name if state.lexicon is not None else None
    branches = compile_item_branches(cfg, lexicon_name, state.generators) if cfg.enabled else []
    if long_tail:
        items = flag_long_tail(items, sequences, cfg.long_tail_share, total=total)
    else:
        items = items.withColumn(LONG_TAIL_COLUMN, F.lit(False))
    schema = output_schema(AUGMENTED_ITEMS)

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            yield from augment_item_record_batch(record_batch, branches, state, seed, run_id, config_hash, schema)

    partitioned = items.repartition(partitions, "item_id") if partitions else items.repartition("item_id")
    return partitioned.mapInArrow(augment_partition, AUGMENTED_ITEMS)


def _item_columns(items: DataFrame) -> DataFrame:
    """``items`` reduced to :data:`ITEM_COLUMNS` (``price_imputed`` null when absent); missing
    columns of the ``items`` table fail here."""
    from pyspark.sql import functions as F

    missing = [c for c in ("item_id", "title", "description", "category", "price", "attributes") if c not in items.columns]
    if missing:
        raise ValueError(f"items lack the column(s) {missing}; expected the `items` table's columns {list(ITEM_COLUMNS)}")
    if "price_imputed" not in items.columns:
        items = items.withColumn("price_imputed", F.lit(None).cast("boolean"))
    return items.select(*ITEM_COLUMNS)


def fit_item_state(items: DataFrame, branches, *, lexicon: Lexicon | None = None, models_dir: str | None = None,
                   profile: bool = False) -> tuple[ItemState, int]:
    """The state the ``branches``' operators share, and the number of items (0 unless counted).

    One :func:`profile_catalog` pass fits what they need: the vocabulary of the WordNet lexicon
    (text operators, unless ``lexicon`` is given), feature statistics (noise operators), the item
    count (``profile``: long-tail targeting needs it). Generator operators get the latest version
    of their model in ``models_dir``."""
    kinds = {ITEM_REGISTRY[name].kind for b in branches for name in b.operators}
    fit_lexicon = "text" in kinds and lexicon is None
    fitted = CatalogProfile(0, frozenset(), {})
    if fit_lexicon or "noise" in kinds or profile:
        fitted = profile_catalog(items, vocabulary=fit_lexicon, features="noise" in kinds)
    if fit_lexicon:
        lexicon = wordnet_lexicon(fitted.vocabulary)
    state = ItemState(lexicon=lexicon, stats=fitted.stats, generators=_generator_refs(branches, models_dir))
    return state, fitted.items


def _generator_refs(branches, models_dir: str | None) -> dict:
    """Artifact name → the latest ArtifactRef, for every generator model the branches' operators use."""
    names = {op.artifact for b in branches for op in (build_item(n, b.params.get(n)) for n in b.operators)
             if op.artifact}
    if not names:
        return {}
    if models_dir is None:
        raise ValueError(f"item operators using generator models {sorted(names)} need the models folder (run.models)")
    return {name: latest(models_dir, name) for name in sorted(names)}


def write_augmented_items(ctx: RunContext) -> tuple[int | None, dict[str, int]]:
    """Write ``augmented_items`` (real ∪ augmented, partitioned by ``operator_chain``) in one
    idempotent commit; returns (table version, rows per operator_chain), or (None, {}) when
    ``augment.items.enabled`` is false."""
    from recaug_spark.delta import rows_by_partition
    from recaug_spark.export import augmented_table_metadata

    cfg = ctx.cfg.augment.items
    if not cfg.enabled:
        return None, {}
    uri, txn = ctx.warehouse.uri(TABLE), ctx.txn("augment_items")
    if ctx.warehouse.committed(TABLE, txn):  # a retry of this run: nothing refitted nor rewritten
        version = ctx.warehouse.committed_version(TABLE, txn)
        return version, _counts(rows_by_partition(uri, "operator_chain", version))
    sequences = (ctx.warehouse.read("sequences", version=ctx.input_version("sequences"))
                 if ctx.warehouse.exists("sequences") else None)
    items = ctx.warehouse.read("items", version=ctx.input_version("items"))  # the last complete clean's
    augmented = augment_items(items, sequences, cfg, ctx.cfg.run.seed, ctx.run_id,
                              ctx.cfg.hash, models_dir=ctx.models_dir)
    written = ctx.warehouse.write(TABLE, augmented, mode="overwrite", partition_by=["operator_chain"], txn=txn,
                                  metadata=augmented_table_metadata())
    return written.version, _counts(rows_by_partition(written.uri, "operator_chain", written.version))


def _counts(per_chain: dict) -> dict[str, int]:
    return {str(chain): int(rows) for chain, rows in sorted(per_chain.items(), key=lambda kv: str(kv[0]))}

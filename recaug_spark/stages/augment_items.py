"""The item side of the augment stage: real items plus augmented variants, with provenance.

Fit once with Spark (Merlin's fit/transform split): item popularity in the training sequences
(long-tail targeting, joined onto the items as a flag), the catalog's vocabulary (to restrict the
WordNet lexicon to the catalog's own words) and per-category feature statistics (for the noise
operators). Then transform: items are hash-partitioned by ``item_id`` and each partition runs the
pure operators of :mod:`recaug_spark.augment.item_ops` in ``mapInArrow``. Randomness is keyed per
item, so the output does not depend on partitioning.

The table ``augmented_items`` is partitioned by ``operator_chain``: one chain's rows (an ablation)
or the real rows (``operator_chain = 'real'``) are read without scanning the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from recaug_spark.augment.item_ops import (
    ITEM_REGISTRY,
    FeatureStat,
    ItemAugmenter,
    ItemState,
    Lexicon,
    apply_chain,
    build_item_augmenter,
    catalog_vocabulary,
    feature_values,
    wordnet_lexicon,
)
from recaug_spark.config import ItemAugmentConfig
from recaug_spark.runs import RunContext

REAL_CHAIN = "real"  # operator_chain of the real rows (the same as augmented_sequences)
TABLE = "augmented_items"
ITEM_COLUMNS = ("item_id", "title", "description", "category", "price", "price_imputed", "attributes")
_TAIL = "_long_tail"

AUGMENTED_ITEMS = T.StructType([
    T.StructField("variant_id", T.StringType(), False),  # item_id for real rows, item_id~branch:copy otherwise
    T.StructField("item_id", T.StringType(), False),  # the real parent item
    T.StructField("title", T.StringType(), True),
    T.StructField("description", T.StringType(), True),
    T.StructField("category", T.StringType(), True),
    T.StructField("price", T.DoubleType(), True),
    T.StructField("price_imputed", T.BooleanType(), True),  # the parent's flag (real rows: as in `items`)
    T.StructField("attributes", T.StringType(), True),
    T.StructField("origin", T.StringType(), False),  # real / augmented
    T.StructField("operator_chain", T.StringType(), False),  # "real", or e.g. "synonym_replace>price_noise"
    T.StructField("branch", T.IntegerType(), True),  # index of the config branch
    T.StructField("copy", T.IntegerType(), True),
    T.StructField("params", T.StringType(), True),  # JSON: operator -> parameters, plus _target
    T.StructField("seed", T.LongType(), False),
    T.StructField("generator", T.StringType(), True),  # the lexicon (name@version) of text operators
    T.StructField("run_id", T.StringType(), False),
    T.StructField("config_hash", T.StringType(), False),
])


@dataclass(frozen=True)
class CompiledItemBranch:
    index: int
    chain: str
    operators: tuple[ItemAugmenter, ...]
    copies: int
    long_tail_only: bool
    params_json: str
    generator: str | None


def compile_item_branches(cfg: ItemAugmentConfig, lexicon_name: str | None,
                          generators: dict | None = None) -> list[CompiledItemBranch]:
    """The configured branches, each with its ``generator`` provenance: the lexicon (text operators)
    and the ``name@version`` of each generator model its operators use (``generators``: artifact
    name → ArtifactRef)."""
    branches = []
    for index, branch in enumerate(cfg.branches):
        operators = tuple(build_item_augmenter(name, branch.params.get(name)) for name in branch.operators)
        tail_only = cfg.long_tail_only if branch.long_tail_only is None else branch.long_tail_only
        params = {op.name: op.params.model_dump(mode="json") for op in operators}
        params["_target"] = {"long_tail_share": cfg.long_tail_share} if tail_only else {}
        tags = [lexicon_name] if any(op.kind == "text" for op in operators) and lexicon_name else []
        tags += [generators[op.artifact].tag for op in operators if op.artifact and generators and op.artifact in generators]
        branches.append(CompiledItemBranch(index, ">".join(branch.operators), operators, branch.copies, tail_only,
                                           json.dumps(params, sort_keys=True), ",".join(dict.fromkeys(tags)) or None))
    return branches


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


def fit_item_stats(items: DataFrame) -> dict:
    """Per-(category, feature) statistics; the same numbers as ``item_ops.fit_feature_stats``."""
    return profile_catalog(items, vocabulary=False).stats


def flag_long_tail(items: DataFrame, sequences: DataFrame, share: float, total: int | None = None) -> DataFrame:
    """``items`` with a boolean ``_long_tail``: the least popular ``share`` of the ``total`` items
    (default: counted) by training interactions (never interacted with: 0; ties broken by item id)."""
    from pyspark.sql import functions as F

    total = items.count() if total is None else total
    tail_size = int(np.floor(share * total))
    counts = sequences.select(F.explode("item_ids").alias("item_id")).groupBy("item_id").agg(
        F.count(F.lit(1)).alias("_interactions"))
    ranked = items.select("item_id").join(counts, "item_id", "left").fillna(0, ["_interactions"])
    tail = ranked.orderBy("_interactions", "item_id").limit(tail_size).select("item_id", F.lit(True).alias(_TAIL))
    return items.join(tail, "item_id", "left").withColumn(_TAIL, F.coalesce(F.col(_TAIL), F.lit(False)))


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
    from pyspark.sql.pandas.types import to_arrow_schema

    missing = [c for c in ("item_id", "title", "description", "category", "price", "attributes") if c not in items.columns]
    if missing:
        raise ValueError(f"items lack the column(s) {missing}; expected the `items` table's columns {list(ITEM_COLUMNS)}")
    if "price_imputed" not in items.columns:
        items = items.withColumn("price_imputed", F.lit(None).cast("boolean"))
    items = items.select(*ITEM_COLUMNS)
    configured = cfg.branches if cfg.enabled else ()
    kinds = {ITEM_REGISTRY[name].kind for b in configured for name in b.operators}
    long_tail = any(cfg.long_tail_only if b.long_tail_only is None else b.long_tail_only for b in configured)
    if long_tail and sequences is None:
        raise ValueError("augment.items.long_tail_only needs the training sequences (item popularity); "
                         "pass `sequences` or set long_tail_only: false")
    profile = CatalogProfile(0, frozenset(), {})
    if ("text" in kinds and lexicon is None) or "noise" in kinds or long_tail:
        profile = profile_catalog(items, vocabulary="text" in kinds and lexicon is None, features="noise" in kinds)
    if "text" in kinds and lexicon is None:
        lexicon = wordnet_lexicon(profile.vocabulary)
    generators = _generator_refs(configured, models_dir)
    state = ItemState(lexicon=lexicon, stats=profile.stats, generators=generators)
    branches = compile_item_branches(cfg, lexicon.name if lexicon is not None else None, generators) if cfg.enabled else []
    if long_tail:
        items = flag_long_tail(items, sequences, cfg.long_tail_share, total=profile.items)
    else:
        items = items.withColumn(_TAIL, F.lit(False))

    schema = pa.schema([f.with_nullable(True) for f in to_arrow_schema(AUGMENTED_ITEMS)])

    def provenance(n: int, **values) -> dict[str, pa.Array]:
        return {name: value if isinstance(value, pa.Array) else pa.array([value] * n, schema.field(name).type)
                for name, value in values.items()}

    def to_batch(columns: dict[str, pa.Array]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)

    def augment_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for record_batch in batches:
            n = record_batch.num_rows
            if n == 0:
                continue
            real = {name: record_batch.column(name).cast(schema.field(name).type) for name in ITEM_COLUMNS}
            common = {"seed": seed, "run_id": run_id, "config_hash": config_hash}
            yield to_batch({**real, **provenance(n, variant_id=real["item_id"], origin="real",
                                                 operator_chain=REAL_CHAIN, branch=None, copy=None, params=None,
                                                 generator=None, **common)})
            frame = record_batch.select(list(ITEM_COLUMNS)).to_pandas()
            tail = record_batch.column(_TAIL).to_numpy(zero_copy_only=False).astype(bool)
            for branch in branches:
                chosen = frame[tail] if branch.long_tail_only else frame
                if chosen.empty:
                    continue
                chosen = chosen.reset_index(drop=True)
                for copy in range(branch.copies):
                    out = apply_chain(chosen, branch.operators, state, seed=seed, branch=branch.index, copy=copy)
                    m = len(out)
                    columns = {name: pa.array(out[name], schema.field(name).type, from_pandas=True)
                               for name in ITEM_COLUMNS}
                    variant = pa.array([f"{i}~{branch.index}:{copy}" for i in out["item_id"]], pa.string())
                    yield to_batch({**columns, **provenance(
                        m, variant_id=variant, origin="augmented", operator_chain=branch.chain, branch=branch.index,
                        copy=copy, params=branch.params_json, generator=branch.generator, **common)})

    partitioned = items.repartition(partitions, "item_id") if partitions else items.repartition("item_id")
    return partitioned.mapInArrow(augment_partition, AUGMENTED_ITEMS)


def _generator_refs(branches, models_dir: str | None) -> dict:
    """Artifact name → the latest ArtifactRef, for every generator model the branches' operators use."""
    names = {op.artifact for b in branches for op in (build_item_augmenter(n, b.params.get(n)) for n in b.operators)
             if op.artifact}
    if not names:
        return {}
    from recaug_spark.generators.artifacts import latest

    if models_dir is None:
        raise ValueError(f"item operators using generator models {sorted(names)} need the models folder (run.models)")
    return {name: latest(models_dir, name) for name in sorted(names)}


def write_augmented_items(ctx: RunContext) -> tuple[int | None, dict[str, int]]:
    """Write ``augmented_items`` (real ∪ augmented, partitioned by ``operator_chain``) in one
    idempotent commit; returns (table version, rows per operator_chain), or (None, {}) when
    ``augment.items.enabled`` is false."""
    from recaug_spark.delta import (
        committed_txn_version,
        rows_by_partition,
        table_exists,
        table_version,
    )

    cfg = ctx.cfg.augment.items
    if not cfg.enabled:
        return None, {}
    uri, txn = ctx.warehouse.uri(TABLE), ctx.txn("augment_items")
    done = committed_txn_version(uri, txn[0]) if table_exists(uri) else None
    if done is not None and done >= txn[1]:  # a retry of this run: nothing refitted nor rewritten
        version = table_version(uri)
        return version, _counts(rows_by_partition(uri, "operator_chain", version))
    sequences = ctx.warehouse.read("sequences") if ctx.warehouse.exists("sequences") else None
    augmented = augment_items(ctx.warehouse.read("items"), sequences, cfg, ctx.cfg.run.seed, ctx.run_id,
                              ctx.cfg.hash, models_dir=ctx.models_dir)
    written = ctx.warehouse.write(TABLE, augmented, mode="overwrite", partition_by=["operator_chain"], txn=txn)
    return written.version, _counts(rows_by_partition(written.uri, "operator_chain", written.version))


def _counts(per_chain: dict) -> dict[str, int]:
    return {str(chain): int(rows) for chain, rows in sorted(per_chain.items(), key=lambda kv: str(kv[0]))}

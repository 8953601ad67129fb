"""Data-quality report of an augmented table (real ∪ augmented rows), from Spark aggregates only.

No raw row reaches the driver: Spark reduces the table to per-group histograms and sums (a group is
the real rows, each operator chain, and all augmented rows together), and the driver turns those
into figures. Three families, each augmented group measured against the real rows:

* **Fidelity** — do augmented sequences look like real ones?
  - sequence length: Jensen-Shannon divergence (base 2, in [0, 1]), total variation distance and
    Wasserstein-1 distance (in items) between the length histograms;
  - item popularity: JS and TV between the item-frequency distributions. Computed in Spark from an
    inner join only: TV = 1 - Σ min(p, q), and JS = ½(1 - Σ p) + ½(1 - Σ q) + ½ Σ [p log2(2p/(p+q))
    + q log2(2q/(p+q))] with the sums over items present in both (an item present in only one
    distribution contributes half its mass);
  - item transitions: the share of augmented bigrams (consecutive item pairs, mask tokens left out)
    that occur somewhere in the real sequences.
* **Diversity** — catalog coverage (distinct items / catalog size), Gini of item frequency over the
  whole catalog (items never seen count as zeros; 0 = uniform, (n-1)/n = one item takes all), the
  share of interactions on tail items (outside the ``head_share`` most popular items of the real
  rows) and the mask-token share.
* **Privacy** — for augmented or synthetic rows: the share identical to some real sequence (same
  item list), the share identical to its parent (the real sequence of the same ``user_id``), and
  the Jaccard distance between its item set and its parent's (mean, median, 10th percentile, share
  at 0). The distance to the *nearest* real sequence over all users would need an all-pairs join;
  the parent is the real sequence an augmented row was derived from, so it is the closest relevant
  one and stays a single equi-join.

Example::

    table = spark.read.parquet(...)  # or warehouse.read("augmented_sequences", version=4)
    quality = quality_report(table, catalog_size=2_000)
    quality["groups"]["crop"]["length_js"]      # fidelity of crop's lengths
    print(quality_markdown(quality))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from recaug_spark.schemas import REAL_CHAIN
from recaug_spark.train.data import CHAIN_COLUMN, MASK_TOKEN

ALL_AUGMENTED = "augmented (all)"


class QualityError(ValueError):
    """A table the report cannot be computed on; the message names the missing column or chain."""


# ---------------------------------------------------------------- pure figures (numpy, no Spark)

def distribution_distances(p_counts, q_counts) -> dict[str, float]:
    """JS divergence (base 2), total variation and Wasserstein-1 between two histograms over the same
    ordered, unit-spaced support (e.g. sequence lengths 0..L). Counts are normalised here."""
    p = np.asarray(p_counts, dtype=np.float64)
    q = np.asarray(q_counts, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms over different supports: {p.shape} vs {q.shape}")
    if p.sum() <= 0 or q.sum() <= 0:
        return {"js": float("nan"), "tv": float("nan"), "wasserstein": float("nan")}
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return {"js": float(max(0.0, (kl_p + kl_q) / 2)), "tv": float(np.abs(p - q).sum() / 2),
            "wasserstein": float(np.abs(np.cumsum(p) - np.cumsum(q)).sum())}


def histograms_on_common_support(p: Mapping[int, int], q: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Two {value: count} histograms as arrays over 0..max value."""
    top = max([0, *p, *q])
    a, b = np.zeros(top + 1), np.zeros(top + 1)
    for value, count in p.items():
        a[int(value)] += count
    for value, count in q.items():
        b[int(value)] += count
    return a, b


def gini_from_histogram(values: Sequence[float], multiplicities: Sequence[int]) -> float:
    """Gini coefficient of a population given as distinct values and how many members have each.

    Exact: with the n members sorted ascending, G = Σ_i (2i - n - 1) x_i / (n Σ x); a run of equal
    values at positions a..b contributes x (b - a + 1)(a + b - n - 1).
    """
    values = np.asarray(values, dtype=np.float64)
    mult = np.asarray(multiplicities, dtype=np.float64)
    keep = mult > 0
    values, mult = values[keep], mult[keep]
    order = np.argsort(values, kind="stable")
    values, mult = values[order], mult[order]
    n = mult.sum()
    total = (values * mult).sum()
    if n == 0 or total <= 0:
        return float("nan") if n == 0 else 0.0
    last = np.cumsum(mult)  # 1-based position of each run's last member
    first = last - mult + 1
    return float((values * mult * (first + last - n - 1)).sum() / (n * total))


# ---------------------------------------------------------------- Spark aggregates

def quality_report(table, *, catalog_size: int | None = None, head_share: float = 0.2,
                   chain_column: str = CHAIN_COLUMN, real_chain: str = REAL_CHAIN,
                   mask_token: str = MASK_TOKEN) -> dict[str, Any]:
    """Fidelity, diversity and privacy figures of ``table`` (a Spark DataFrame with ``user_id``,
    ``item_ids`` and ``chain_column``), per group: ``real``, each augmented chain and, when there
    are several, ``augmented (all)``. Returns a JSON-able dict (see the module docstring)."""
    base, group_names = _rows_by_group(table, chain_column, real_chain)
    lengths, masks = _length_histograms(base, group_names, mask_token)
    items = _item_aggregates(base, group_names, catalog_size, head_share, mask_token)
    bigrams = _bigram_counts(base, mask_token)
    privacy = _privacy_aggregates(table, base, chain_column, real_chain, mask_token)
    groups: dict[str, dict[str, Any]] = {}
    for g in group_names:
        groups[g] = _diversity_figures(g, lengths[g], masks.get(g, 0), items)
        if g != REAL_CHAIN:
            groups[g].update(_fidelity_figures(g, lengths, items, bigrams.get(g, (0, 0))))
            groups[g].update(_privacy_figures(privacy.get(g)))
    return {"catalog_size": items.catalog, "head_items": items.n_head, "head_share": head_share, "groups": groups,
            "length_histograms": {g: {int(k): int(v) for k, v in sorted(h.items())} for g, h in lengths.items()}}


@dataclass(frozen=True)
class _ItemAggregates:
    frequency_hist: dict[str, list[tuple[int, int]]]  # per group: (interactions of an item, items with that count)
    totals: dict[str, tuple[int, int]]  # per group: (interactions, distinct items)
    catalog: int
    n_head: int
    head_hits: dict[str, int]  # per group: interactions on head items
    terms: dict[str, Any]  # per augmented group: the sums over items shared with the real rows (JS, TV)

    @property
    def real_total(self) -> int:
        return self.totals.get(REAL_CHAIN, (0, 0))[0]


def _rows_by_group(table, chain_column: str, real_chain: str):
    """(``user_id``, ``item_ids``, ``group``) rows, a row once per group it belongs to, and the
    group names in report order."""
    from pyspark.sql import functions as F

    missing = [c for c in ("user_id", "item_ids", chain_column) if c not in table.columns]
    if missing:
        raise QualityError(f"the table has no column(s) {missing}; an augmented table has user_id, item_ids and "
                           f"{chain_column} (it has {table.columns})")
    chains = sorted(r[0] for r in table.select(chain_column).distinct().collect())
    if real_chain not in chains:
        raise QualityError(f"no real rows ({chain_column} = '{real_chain}') to compare with; chains: {chains}")
    augmented = [c for c in chains if c != real_chain]
    groups_of_row = F.when(F.col(chain_column) == real_chain, F.array(F.lit(REAL_CHAIN)))
    groups_of_row = groups_of_row.otherwise(F.array(F.col(chain_column), F.lit(ALL_AUGMENTED)) if len(augmented) > 1
                                            else F.array(F.col(chain_column)))
    base = table.select("user_id", "item_ids", F.explode(groups_of_row).alias("group"))
    return base, [REAL_CHAIN, *augmented, *([ALL_AUGMENTED] if len(augmented) > 1 else [])]


def _length_histograms(base, group_names: Sequence[str], mask_token: str):
    """({group: {length: sequences}}, {group: mask tokens})."""
    from pyspark.sql import functions as F

    lengths: dict[str, dict[int, int]] = {g: {} for g in group_names}
    masks: dict[str, int] = {}
    n_masks = F.size(F.filter("item_ids", lambda x: x == F.lit(mask_token)))
    for row in base.groupBy("group", F.size("item_ids").alias("length")).agg(
            F.count("*").alias("count"), F.sum(n_masks).alias("masks")).collect():
        lengths[row["group"]][int(row["length"])] = int(row["count"])
        masks[row["group"]] = masks.get(row["group"], 0) + int(row["masks"] or 0)
    return lengths, masks


def _item_aggregates(base, group_names: Sequence[str], catalog_size: int | None, head_share: float,
                     mask_token: str) -> _ItemAggregates:
    """Item-frequency histograms, head-item hits and the item-distribution distance terms per group."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    tokens = base.select("group", F.explode("item_ids").alias("item_id"))
    counts = (tokens.where(F.col("item_id").isNotNull() & (F.col("item_id") != mask_token))
              .groupBy("group", "item_id").count().persist(StorageLevel.MEMORY_AND_DISK))
    try:
        frequency_hist: dict[str, list[tuple[int, int]]] = {g: [] for g in group_names}
        for r in counts.groupBy("group", "count").agg(F.count("*").alias("items")).collect():
            frequency_hist[r["group"]].append((int(r["count"]), int(r["items"])))
        totals = {g: (sum(v * c for v, c in hist), sum(c for _, c in hist)) for g, hist in frequency_hist.items()}
        catalog = int(catalog_size) if catalog_size else counts.select("item_id").distinct().count()
        n_head = int(math.ceil(head_share * catalog)) if catalog else 0
        real_counts = counts.where(F.col("group") == REAL_CHAIN).select("item_id", F.col("count").alias("real_count"))
        head_hits = _head_hits(counts, real_counts, n_head)
        terms = _item_distance_terms(counts, real_counts, totals.get(REAL_CHAIN, (0, 0))[0])
    finally:
        counts.unpersist()
    return _ItemAggregates(frequency_hist, totals, catalog, n_head, head_hits, terms)


def _head_hits(counts, real_counts, n_head: int) -> dict[str, int]:
    """Interactions per group on the ``n_head`` most popular items of the real rows (ties by id)."""
    from pyspark.sql import functions as F

    head = real_counts.orderBy(F.col("real_count").desc(), F.col("item_id")).limit(n_head).select("item_id")
    return {r["group"]: int(r["n"]) for r in counts.join(F.broadcast(head), "item_id")
            .groupBy("group").agg(F.sum("count").alias("n")).collect()}


def _item_distance_terms(counts, real_counts, real_total: int) -> dict[str, Any]:
    """Per augmented group, sums over the items it shares with the real rows: Σ min(p, q), Σ p, Σ q
    and the JS terms Σ [p log2(2p/(p+q)) + q log2(2q/(p+q))]."""
    from pyspark.sql import functions as F

    p = real_counts.select("item_id", (F.col("real_count") / F.lit(max(real_total, 1))).alias("p"))
    group_totals = counts.groupBy("group").agg(F.sum("count").alias("total"))
    q = (counts.where(F.col("group") != REAL_CHAIN).join(group_totals, "group")
         .select("group", "item_id", (F.col("count") / F.col("total")).alias("q")))
    m = (F.col("p") + F.col("q")) / 2
    return {r["group"]: r for r in q.join(p, "item_id").groupBy("group").agg(
        F.sum(F.least("p", "q")).alias("sum_min"), F.sum("p").alias("sum_p"), F.sum("q").alias("sum_q"),
        F.sum(F.col("p") * F.log2(F.col("p") / m) + F.col("q") * F.log2(F.col("q") / m)).alias("js_inner"),
    ).collect()}


def _bigram_counts(base, mask_token: str) -> dict[str, tuple[int, int]]:
    """Per augmented group, (bigrams, bigrams seen in real rows); pairs with a mask token are left out."""
    from pyspark.sql import functions as F

    pairs = F.expr("zip_with(slice(item_ids, 1, greatest(size(item_ids) - 1, 0)), "
                   "slice(item_ids, 2, greatest(size(item_ids) - 1, 0)), (x, y) -> named_struct('a', x, 'b', y))")
    bigrams = base.select("group", F.explode(pairs).alias("pair")).select("group", "pair.a", "pair.b")
    bigrams = bigrams.where((F.col("a") != mask_token) & (F.col("b") != mask_token))
    real_bigrams = bigrams.where(F.col("group") == REAL_CHAIN).select("a", "b").distinct().withColumn("seen", F.lit(1))
    return {r["group"]: (int(r["n"]), int(r["seen"] or 0)) for r in
            bigrams.where(F.col("group") != REAL_CHAIN).join(real_bigrams, ["a", "b"], "left")
            .groupBy("group").agg(F.count("*").alias("n"), F.sum("seen").alias("seen")).collect()}


def _privacy_aggregates(table, base, chain_column: str, real_chain: str, mask_token: str) -> dict[str, Any]:
    """Per augmented group: identical to any real sequence, identical to the parent, and the
    Jaccard distance to the parent (mean, 10th and 50th percentiles, share at 0)."""
    from pyspark.sql import functions as F

    real_rows = table.where(F.col(chain_column) == real_chain)
    real_lists = real_rows.select("item_ids").distinct().withColumn("_copy", F.lit(1))
    parents = real_rows.select(F.col("user_id").alias("_parent"), F.col("item_ids").alias("_parent_items"))
    mine = F.array_distinct(F.array_remove("item_ids", mask_token))
    theirs = F.array_distinct("_parent_items")
    union = F.size(F.array_union(mine, theirs))
    distance = F.when(F.col("_parent_items").isNull(), F.lit(None)).when(union == 0, F.lit(0.0)).otherwise(
        1 - F.size(F.array_intersect(mine, theirs)) / union)
    privacy_rows = (base.where(F.col("group") != REAL_CHAIN).join(real_lists, "item_ids", "left")
                    .join(parents, F.col("user_id") == F.col("_parent"), "left")
                    .select("group", F.coalesce("_copy", F.lit(0)).alias("copy"),
                            F.when(F.col("_parent_items").isNull(), F.lit(None))
                            .otherwise((F.col("item_ids") == F.col("_parent_items")).cast("int")).alias("same"),
                            distance.alias("jaccard")))
    return {r["group"]: r for r in privacy_rows.groupBy("group").agg(
        F.count("*").alias("n"), F.avg("copy").alias("copy"), F.avg("same").alias("same"),
        F.count("jaccard").alias("with_parent"), F.avg("jaccard").alias("jaccard_mean"),
        F.percentile_approx("jaccard", [0.1, 0.5], 1000).alias("jaccard_q"),
        F.avg((F.col("jaccard") == 0).cast("int")).alias("jaccard_zero")).collect()}


def _diversity_figures(group: str, lengths: Mapping[int, int], masks: int, items: _ItemAggregates) -> dict[str, Any]:
    total, distinct = items.totals.get(group, (0, 0))
    n_sequences = sum(lengths.values())
    events = sum(k * v for k, v in lengths.items())
    catalog = items.catalog
    hist = items.frequency_hist[group] + ([(0, catalog - distinct)] if catalog > distinct else [])
    return {
        "sequences": n_sequences, "events": events,
        "mean_length": events / n_sequences if n_sequences else float("nan"),
        "coverage": min(distinct / catalog, 1.0) if catalog else float("nan"),
        "distinct_items": distinct,
        "gini": gini_from_histogram([v for v, _ in hist], [c for _, c in hist]) if hist else float("nan"),
        "tail_share": 1 - items.head_hits.get(group, 0) / total if total else float("nan"),
        "mask_share": masks / events if events else 0.0,
    }


def _fidelity_figures(group: str, lengths: Mapping[str, Mapping[int, int]], items: _ItemAggregates,
                      bigrams: tuple[int, int]) -> dict[str, float]:
    d = distribution_distances(*histograms_on_common_support(lengths[REAL_CHAIN], lengths[group]))
    figures = {"length_js": d["js"], "length_tv": d["tv"], "length_wasserstein": d["wasserstein"]}
    total, real_total = items.totals.get(group, (0, 0))[0], items.real_total
    terms = items.terms.get(group)
    if terms is None or not real_total or not total:
        # no item in common (the distributions are disjoint), or one side is empty
        disjoint = 1.0 if total and real_total else float("nan")
        figures.update({"item_js": disjoint, "item_tv": disjoint})
    else:
        js = 0.5 * ((1 - terms["sum_p"]) + (1 - terms["sum_q"])) + 0.5 * (terms["js_inner"] or 0.0)
        figures.update({"item_js": float(min(max(js, 0.0), 1.0)),
                        "item_tv": float(min(max(1 - terms["sum_min"], 0.0), 1.0))})
    n_bigrams, seen = bigrams
    figures["bigram_seen_share"] = seen / n_bigrams if n_bigrams else float("nan")
    return figures


def _privacy_figures(row) -> dict[str, Any]:
    """The privacy figures of one augmented group from its aggregate ``row`` (None: no rows)."""
    quantiles = (row["jaccard_q"] if row is not None and row["jaccard_q"] else None) or [None, None]
    return {
        "identical_to_real_share": _float(row, "copy"),
        "identical_to_parent_share": _float(row, "same"),
        "with_parent": int(row["with_parent"]) if row is not None else 0,
        "jaccard_to_parent_mean": _float(row, "jaccard_mean"),
        "jaccard_to_parent_p10": float("nan") if quantiles[0] is None else float(quantiles[0]),
        "jaccard_to_parent_p50": float("nan") if quantiles[1] is None else float(quantiles[1]),
        "same_items_as_parent_share": _float(row, "jaccard_zero"),
    }


def _float(row, key: str) -> float:
    """``row[key]`` as a float; NaN when there is no row or the value is null."""
    if row is None or row[key] is None:
        return float("nan")
    return float(row[key])


# ---------------------------------------------------------------- report

_FIDELITY = [("length_js", "length JS"), ("length_tv", "length TV"), ("length_wasserstein", "length W1"),
             ("item_js", "item JS"), ("item_tv", "item TV"), ("bigram_seen_share", "bigrams seen in real")]
_DIVERSITY = [("sequences", "sequences"), ("mean_length", "mean length"), ("coverage", "catalog coverage"),
              ("gini", "Gini of item frequency"), ("tail_share", "tail-item share"), ("mask_share", "mask share")]
_PRIVACY = [("identical_to_real_share", "identical to a real sequence"),
            ("identical_to_parent_share", "identical to parent"),
            ("jaccard_to_parent_mean", "Jaccard dist. to parent (mean)"),
            ("jaccard_to_parent_p50", "median"), ("jaccard_to_parent_p10", "10th pct."),
            ("same_items_as_parent_share", "same item set as parent")]


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"


def _table(quality: Mapping[str, Any], columns, groups: Sequence[str]) -> list[str]:
    lines = ["| group | " + " | ".join(label for _, label in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for g in groups:
        figures = quality["groups"][g]
        lines.append(f"| {g} | " + " | ".join(_cell(figures.get(key, float("nan"))) for key, _ in columns) + " |")
    return lines


def quality_markdown(quality: Mapping[str, Any], title: str = "Data quality", level: int = 2) -> str:
    """A Markdown section: fidelity, diversity and privacy tables (one row per group)."""
    h = "#" * level
    groups = list(quality["groups"])
    augmented = [g for g in groups if g != REAL_CHAIN]
    lines = [f"{h} {title}", "",
             f"Catalog: {quality['catalog_size']:,} items; head = the {quality['head_items']:,} most popular items of "
             f"the real rows ({quality['head_share']:.0%}). Every figure comes from Spark aggregates.", "",
             f"{h}# Fidelity (augmented vs real; 0 = same distribution)", "",
             *_table(quality, _FIDELITY, augmented), "",
             "JS: Jensen-Shannon divergence (base 2); TV: total variation; W1: Wasserstein-1 in items.", "",
             f"{h}# Diversity", "", *_table(quality, _DIVERSITY, groups), "",
             f"{h}# Privacy (augmented rows vs the real rows)", "", *_table(quality, _PRIVACY, augmented), "",
             "The parent of an augmented row is the real sequence of the same user_id; the distance to the "
             "nearest real sequence of any user is not computed (an all-pairs join).", ""]
    return "\n".join(lines)


def quality_plots(quality: Mapping[str, Any], folder: str | Path) -> list[str]:
    """PNG plots (length distributions, diversity bars) into ``folder``; returns the file names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [plot_lengths(quality, folder / "quality_lengths.png"),
            plot_diversity(quality, folder / "quality_diversity.png")]


def plot_lengths(quality: Mapping[str, Any], path: Path) -> str:
    """The share of sequences by length (up to the 99th percentile), a line per group."""
    from recaug_spark.train.figures import new_figure, save_figure

    fig, ax = new_figure(figsize=(7, 4))
    for g, hist in quality["length_histograms"].items():
        if not hist:
            continue
        total = sum(hist.values())
        xs = sorted(hist)
        cut = [x for x in xs if x <= np.percentile(np.repeat(xs, [hist[x] for x in xs]), 99)] or xs
        ax.plot(cut, [hist[x] / total for x in cut], label=g, linewidth=2 if g == REAL_CHAIN else 1)
    ax.set_xlabel("sequence length (items, up to the 99th percentile)")
    ax.set_ylabel("share of sequences")
    ax.set_title("Sequence length: real vs augmented")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_diversity(quality: Mapping[str, Any], path: Path) -> str:
    """Coverage, Gini and tail share, a bar per group."""
    from recaug_spark.train.figures import new_figure, save_figure

    groups = list(quality["groups"])
    keys = [("coverage", "coverage"), ("gini", "Gini"), ("tail_share", "tail share")]
    fig, ax = new_figure(figsize=(7, 4))
    width = 0.8 / len(groups)
    for i, g in enumerate(groups):
        values = [quality["groups"][g].get(k, float("nan")) for k, _ in keys]
        ax.bar(np.arange(len(keys)) + i * width, values, width, label=g)
    ax.set_xticks(np.arange(len(keys)) + width * (len(groups) - 1) / 2, [label for _, label in keys])
    ax.set_ylim(0, 1)
    ax.set_title("Diversity of item exposure")
    ax.legend(fontsize=8)
    return save_figure(fig, path)

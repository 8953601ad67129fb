"""Typed, frozen, layered configuration.

Layers are YAML files applied in order (``conf/base.yaml`` first), then ``--set key=value``
overrides. The merged mapping is validated by pydantic into frozen models that reject unknown
keys, so a typo fails on the driver before Spark starts, naming the key and what is allowed.
Every run records the effective config (as JSON) and its hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recaug_spark.generators.attributes import AttributeGeneratorConfig
from recaug_spark.generators.sequence import SequenceGeneratorConfig
from recaug_spark.generators.text import DescriptionConfig

PACKAGE_CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    seed: int = 42
    warehouse: str = "./warehouse"
    run_id: str | None = None  # default: a fresh id per run; pass one to make a retry idempotent
    models: str | None = None  # generator artifacts (recaug fit); default: the warehouse's own "models" folder


class SparkConfig(_Section):
    master: str = "local[*]"  # "local[N]", "spark://host:port", or "submit" (use what spark-submit set)
    app_name: str = "recaug-spark"
    shuffle_partitions: int = Field(8, ge=1)
    driver_memory: str = "4g"
    ui: bool = False
    local_ip: str = "127.0.0.1"
    conf: dict[str, str] = Field(default_factory=dict)

    @field_validator("master")
    @classmethod
    def _known_master(cls, value: str) -> str:
        if value == "submit" or value.startswith(("local", "spark://", "yarn", "k8s://")):
            return value
        raise ValueError("must be 'local[N]', 'local[*]', 'spark://host:port', 'yarn', 'k8s://...' or 'submit'")


class ClusterConfig(_Section):
    """A local Spark standalone cluster started by ``recaug cluster start`` (every service on 127.0.0.1).

    PID files and logs live in ``work_dir``; executors' own logs under ``work_dir/work``. Choose
    other ports to run two clusters side by side (tests use free ones).
    """

    # None: $RECAUG_CLUSTER_DIR, else $XDG_STATE_HOME/recaug/cluster, else ~/.local/state/recaug/cluster
    # (absolute, so `recaug cluster status|stop` find the cluster from any directory; see cluster.py)
    work_dir: str | None = None
    master_port: int = Field(7077, ge=1, le=65535)
    master_webui_port: int = Field(8080, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    cores_per_worker: int = Field(2, ge=1)
    memory_per_worker: str = "4g"  # a Spark size with a unit: 512m, 4g (each executor needs 1g by default)
    start_timeout_s: float = Field(120.0, gt=0)  # until the master reports every worker ALIVE
    stop_timeout_s: float = Field(30.0, gt=0)  # SIGTERM, then SIGKILL after this long

    @field_validator("memory_per_worker")
    @classmethod
    def _memory_with_unit(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[1-9][0-9]*[kmgt]b?", value.strip().lower()):
            raise ValueError("must be a size with a unit such as '512m' or '4g'")
        return value.strip().lower()

    @model_validator(mode="after")
    def _distinct_ports(self) -> "ClusterConfig":
        if self.master_port == self.master_webui_port:
            raise ValueError(f"master_port and master_webui_port are both {self.master_port}; they must differ")
        return self


class DeltaConfig(_Section):
    backend: Literal["auto", "native", "deltalake"] = "auto"


class MessConfig(_Section):
    """Planted mess, so that ingest and clean have real work on the embedded default.

    Rates of duplicates, near-duplicates and bad rows are per organic event and exclusive (one
    event gets at most one kind), so the generator can report exact counts of each.
    """

    duplicate_rate: float = Field(0.02, ge=0, le=1)  # exact copies of a row
    near_duplicate_rate: float = Field(0.01, ge=0, le=1)  # same user/item/event 1-5 seconds later
    bad_row_rate: float = Field(0.002, ge=0, le=1)  # rows with one invalid field (kinds drawn evenly)
    bot_users: int = Field(3, ge=0)
    bot_events_per_user: int = Field(2000, ge=1)
    bot_events_per_minute: int = Field(120, ge=1)  # machine rate of a bot's item views
    bot_max_event_share: float = Field(0.1, ge=0, le=0.5)  # bots get at most this share of `events`
    return_rate: float = Field(0.05, ge=0, le=1)  # share of purchases returned 1-30 days later
    missing_item_price_rate: float = Field(0.05, ge=0, le=1)
    messy_item_text_rate: float = Field(0.05, ge=0, le=1)  # upper-cased, padded or HTML-laden text
    missing_session_id_rate: float = Field(0.03, ge=0, le=1)  # sessions whose source id is null

    @model_validator(mode="after")
    def _exclusive_rates(self) -> "MessConfig":
        event_rates = self.duplicate_rate + self.near_duplicate_rate + self.bad_row_rate
        if event_rates > 1:
            raise ValueError(f"duplicate_rate + near_duplicate_rate + bad_row_rate is {event_rates:g}; it must be <= 1")
        if self.missing_item_price_rate + self.messy_item_text_rate > 1:
            raise ValueError("missing_item_price_rate + messy_item_text_rate must be <= 1")
        return self


class GenerateConfig(_Section):
    """The embedded default shop (see ``recaug_spark.stages.generate``)."""

    events: int = Field(100_000, ge=1_000)  # target total rows of generated_events (mess included)
    items: int = Field(2_000, ge=10)
    categories: int = Field(12, ge=1, le=16)  # the first N of the built-in category vocabularies
    users: int | None = Field(None, ge=1)  # default: events / 20
    partitions: int = Field(8, ge=1)
    start_date: str = "2024-01-01"  # UTC midnight of the first day
    days: int = Field(90, ge=1)
    zipf_exponent: float = Field(1.05, gt=0)  # item popularity within a category
    user_activity_alpha: float = Field(1.6, gt=1)  # Pareto tail of events per user
    max_events_per_user: int = Field(5_000, ge=1)  # caps the Pareto tail of organic users
    session_items_mean: float = Field(4.0, ge=1)  # items looked at per session, on average
    session_category_stickiness: float = Field(0.9, ge=0, le=1)  # share of a session's items in its category
    view_to_cart_rate: float = Field(0.15, ge=0, le=1)
    cart_to_purchase_rate: float = Field(0.5, ge=0, le=1)
    mess: MessConfig = MessConfig()
    output: str | None = None  # default: the warehouse (tables generated_events, generated_items)

    @field_validator("start_date")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        import datetime as dt

        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO date such as '2024-01-01'") from None
        return value


IngestFormat = Literal["generated", "csv", "parquet", "json", "delta", "online-retail", "amazon-5core", "diginetica"]


class PseudonymizeConfig(_Section):
    """Keyed pseudonymization of user (and session) ids at ingest: HMAC-SHA256 under a secret key.

    The key comes from ``key_file`` when set, else from the environment variable ``key_env``; it is
    never logged nor stored. Without one, ingest refuses real ids unless ``ids_already_anonymous``.
    """

    key_env: str = "RECAUG_PSEUDONYM_KEY"
    key_file: str | None = None
    ids_already_anonymous: bool = False
    # A quarantined line that could not be split into fields may hold a raw user id that cannot be
    # located: keep only its length (true) or the verbatim line (false) in the quarantine table.
    redact_unparsable: bool = True


class IngestConfig(_Section):
    format: IngestFormat = "generated"
    events: str | None = None  # path (file, folder or glob) of the clickstream
    items: str | None = None  # path of the catalog; None derives items from events where the format can
    events_columns: dict[str, str] = Field(default_factory=dict)  # canonical name -> source column
    items_columns: dict[str, str] = Field(default_factory=dict)
    csv_separator: str = ","
    csv_header: bool = True
    # Spark datetime pattern(s), "epoch_seconds" or "epoch_millis", tried in order; ISO-8601 and the
    # format's native spellings (online-retail: M/d/yyyy H:mm) are always accepted too.
    timestamp_format: str | list[str] | None = None
    encoding: str | None = None  # text files' encoding (e.g. latin-1, utf-16); None = UTF-8 (a BOM decides)
    default_event_type: str = "purchase"
    allow_zero_price: bool = False
    max_future_seconds: int = Field(86_400, ge=0)
    min_timestamp: str = "1995-01-01"
    require_known_items: bool = True
    pseudonymize: PseudonymizeConfig = PseudonymizeConfig()

    @field_validator("events_columns", "items_columns")
    @classmethod
    def _canonical_names(cls, mapping: dict[str, str], info) -> dict[str, str]:
        from recaug_spark.schemas import RAW_EVENT_FIELDS, RAW_ITEM_FIELDS

        allowed = RAW_EVENT_FIELDS if info.field_name == "events_columns" else RAW_ITEM_FIELDS
        unknown = sorted(set(mapping) - set(allowed))
        if unknown:
            raise ValueError(f"unknown canonical column(s) {unknown}; allowed: {list(allowed)}")
        return mapping

    @field_validator("default_event_type")
    @classmethod
    def _known_default_event_type(cls, value: str) -> str:
        from recaug_spark.schemas import EVENT_TYPES

        if value not in EVENT_TYPES:
            raise ValueError(f"unknown event type {value!r}; allowed: {list(EVENT_TYPES)}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        import codecs

        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
        return value

    @field_validator("min_timestamp")
    @classmethod
    def _iso_min_timestamp(cls, value: str) -> str:
        import datetime as _dt

        try:
            _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 date or timestamp (e.g. '1995-01-01')") from None
        return value

    @property
    def catalog_only(self) -> bool:
        """An ingest of a catalog alone: ``items`` set, ``events`` not (it writes ``items_raw`` only)."""
        return self.format != "generated" and not self.events and bool(self.items)


class BotConfig(_Section):
    max_events_per_minute: int = Field(60, ge=1)
    max_events_per_day: int = Field(1_000, ge=1)


class SplitConfig(_Section):
    strategy: Literal["leave_one_out", "time_fraction"] = "leave_one_out"
    valid_fraction: float = Field(0.1, gt=0, lt=1)  # time_fraction only
    test_fraction: float = Field(0.1, gt=0, lt=1)
    min_train_items: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _fractions_leave_a_training_part(self) -> "SplitConfig":
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"valid_fraction + test_fraction = {self.valid_fraction + self.test_fraction:g} must be < 1"
            )
        return self


class CleanConfig(_Section):
    near_duplicate_seconds: int = Field(10, ge=0)  # 0 disables near-duplicate removal
    bots: BotConfig = BotConfig()
    net_returns: bool = True
    session_gap_minutes: int = Field(30, ge=1)
    kcore: int = Field(0, ge=0)  # 0 disables k-core filtering
    sequence_event_types: tuple[str, ...] = ("view", "cart", "purchase")
    max_sequence_length: int = Field(200, ge=3)  # most recent events kept per user
    split: SplitConfig = SplitConfig()

    @field_validator("sequence_event_types")
    @classmethod
    def _known_event_types(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        from recaug_spark.schemas import EVENT_TYPES

        unknown = sorted(set(values) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event type(s) {unknown}; allowed: {list(EVENT_TYPES)}")
        return values


class _ChainConfig(_Section):
    """A chain of operators (names joined by ">"), its copies and its operators' parameters; the
    subclass names the registry that must know every operator and parameter."""

    chain: str
    copies: int = Field(1, ge=1, le=100)  # augmented copies of each targeted real sequence / item
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)  # operator name -> its parameters

    @property
    def operators(self) -> list[str]:
        return [name.strip() for name in self.chain.split(">") if name.strip()]

    @staticmethod
    def _builder():
        raise NotImplementedError

    @model_validator(mode="after")
    def _known_operators(self) -> "_ChainConfig":
        if not self.operators:
            raise ValueError("chain is empty; write operator names joined by '>', e.g. 'crop > mask'")
        unused = sorted(set(self.params) - set(self.operators))
        if unused:
            raise ValueError(f"params given for {unused}, which are not in the chain {self.operators}")
        build = self._builder()
        for name in self.operators:
            build(name, self.params.get(name))  # unknown names or parameters fail here, listing the known ones
        return self


class BranchConfig(_ChainConfig):
    """One branch of the augmentation pipeline: a chain of operators (e.g. "crop > mask") and how
    many copies it makes, with targeting."""

    # Targeting (recaug_spark.augment.targeting), combined with AND; None = no restriction.
    max_length: int | None = Field(None, ge=1)  # only sequences of at most this many training events
    cold_start_days: int | None = Field(None, ge=1)  # only users first seen in the data's last N days
    long_tail_share: float | None = Field(None, gt=0, le=1)  # only sequences with a least-popular-share item

    @staticmethod
    def _builder():
        from recaug_spark.augment.registry import build

        return build


class ItemBranchConfig(_ChainConfig):
    """One branch of item augmentation: a chain of item operators (e.g. "synonym_replace >
    price_noise") and how many copies it makes."""

    long_tail_only: bool | None = None  # None: the section's long_tail_only

    @staticmethod
    def _builder():
        from recaug_spark.augment.registry import build_item

        return build_item


class ItemAugmentConfig(_Section):
    """Item-side augmentation (table ``augmented_items``: real items ∪ augmented variants).

    Targeting: with ``long_tail_only`` a branch augments only long-tail items, the least popular
    ``long_tail_share`` of the catalog by training interactions (items never interacted with first).
    """

    enabled: bool = True
    long_tail_only: bool = True
    long_tail_share: float = Field(0.5, gt=0, le=1)
    branches: tuple[ItemBranchConfig, ...] = (
        ItemBranchConfig(chain="synonym_replace", params={"synonym_replace": {"alpha": 0.2}}),
        ItemBranchConfig(chain="price_noise", params={"price_noise": {"rel_sigma": 0.1}}),
        ItemBranchConfig(chain="attribute_generate"),  # the attribute VAE of recaug fit
        ItemBranchConfig(chain="describe_expand"),  # thin descriptions: MiniLM neighbours' keywords
    )


class AugmentConfig(_Section):
    enabled: bool = True
    partitions: int = Field(8, ge=1)  # sequences are hash-partitioned by user id into this many
    arrow_batch_rows: int = Field(8_192, ge=16)  # sequences per Arrow batch handed to augmenters (docs/benchmarks.md)
    # Heavy users: augmenters see only the most recent N training events of a sequence (its real
    # row is kept whole), so a user with 10^5 events costs no more than one with N.
    max_input_events: int = Field(200, ge=1)
    incremental: bool = False  # re-augment only users whose training sequence changed since the last run
    branches: tuple[BranchConfig, ...] = (
        BranchConfig(chain="crop", params={"crop": {"eta": 0.6}}),
        BranchConfig(chain="mask", params={"mask": {"gamma": 0.3}}),
        BranchConfig(chain="reorder", params={"reorder": {"beta": 0.2}}),
        BranchConfig(chain="prehistory", params={"prehistory": {"k": 3}}, max_length=5),
        BranchConfig(chain="synthetic_user", params={"synthetic_user": {"length": 8}}, cold_start_days=14),
    )
    items: ItemAugmentConfig = ItemAugmentConfig()  # the item side: table augmented_items


# ---------------------------------------------------------------- train

class TrainConfig(_Section):
    """Model, optimisation, early stopping and evaluation protocol of ``recaug_spark.train.trainer``.

    Example::

        cfg = TrainConfig(model="sasrec", epochs=200, patience=10, seeds=(1, 2, 3))
        cfg.model_dump()["hidden"]  # 64
    """

    # ---- model (defaults: SASRec as in the S3-Rec / ICLRec baselines) ----
    model: Literal["sasrec", "gru4rec"] = "sasrec"
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)  # transformer blocks (SASRec) or GRU layers (GRU4Rec)
    heads: int = Field(2, ge=1)  # attention heads (SASRec only); must divide hidden
    max_len: int = Field(50, ge=1)  # the model sees a sequence's last max_len items
    dropout: float = Field(0.5, ge=0, lt=1)  # hidden / embedding dropout
    attention_dropout: float = Field(0.5, ge=0, lt=1)  # SASRec attention-probability dropout

    # ---- optimisation ----
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)  # global: each of W ranks takes ceil(batch_size / W)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)  # validations without a better NDCG@10 before stopping
    eval_every: int = Field(1, ge=1)  # validate every N epochs
    # Optimizer steps per epoch; None: one pass over the training data. Equal for every variant of an
    # experiment, so that augmented data (more rows) gets no more updates than the baseline.
    steps_per_epoch: int | None = Field(None, ge=1)
    # Training objective: bce (one sampled negative per position, as S3-Rec/ICLRec), ce (softmax over
    # every item) or sampled_softmax (softmax over loss_negatives uniform negatives shared by a batch).
    loss: Literal["bce", "ce", "sampled_softmax"] = "bce"
    loss_negatives: int = Field(256, ge=1)  # K of sampled_softmax
    seeds: tuple[int, ...] = (42,)  # train_seeds runs one model per seed; train uses the first

    # ---- evaluation ----
    negatives_protocol: Literal["full", "popularity", "uniform"] = "full"  # full ranking or 1 + N sampled
    sampled_negatives: int = Field(100, ge=1)  # N for the sampled protocols
    ks: tuple[int, ...] = (1, 5, 10, 20)
    early_stopping_metric: str = "ndcg@10"
    exclude_history: bool = True  # items of the user's history cannot be recommended (score -inf)
    eval_batch_size: int = Field(512, ge=1)
    short_history_max: int = Field(5, ge=1)  # breakdown: histories of at most this many items are "short"
    head_item_share: float = Field(0.2, gt=0, lt=1)  # breakdown: the most popular 20% of items are "head"
    cold_history_max: int = Field(4, ge=1)  # breakdown: "cold" users have at most this many history items

    # ---- execution ----
    num_threads: int | None = Field(None, ge=1)  # torch.set_num_threads per process; None: leave as is
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when available

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.model == "sasrec" and self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        if not self.ks or min(self.ks) < 1:
            raise ValueError("ks must be positive cut-offs, e.g. [1, 5, 10, 20]")
        name, _, k = self.early_stopping_metric.partition("@")
        if name not in ("hr", "ndcg", "recall", "mrr", "auc") or (k and int(k) not in self.ks) or (
                name in ("hr", "ndcg", "recall") and not k):
            raise ValueError(f"early_stopping_metric {self.early_stopping_metric!r} must be one of hr@K, ndcg@K, "
                             f"recall@K (K in ks={list(self.ks)}), mrr, auc")
        return self


class VariantConfig(_Section):
    """One arm of an experiment: the real rows plus the augmented rows of ``chains`` ("all": every
    chain), consumed as ``consume`` says:

    * ``rows`` — extra training sequences, beside the real ones;
    * ``weighted`` — extra sequences whose next-item loss is weighted per chain (``chain_weights``,
      ``weight`` for the chains not listed; real rows weigh 1);
    * ``contrastive`` — the next-item loss on real rows only, plus ``contrastive_weight`` × an
      InfoNCE term between two views of the same parent (``temperature``); see
      ``recaug_spark.train.contrastive``;
    * ``pretrain`` — ``pretrain_epochs`` epochs on real + augmented rows, then training on the real
      rows only with the usual early stopping (the ASReP recipe).
    """

    name: str
    chains: Literal["all"] | tuple[str, ...] = "all"  # operator chains as in augmented_sequences.operator_chain
    consume: Literal["rows", "weighted", "contrastive", "pretrain"] = "rows"
    weight: float = Field(1.0, ge=0)  # weighted: loss weight of an augmented row's positions
    chain_weights: dict[str, float] = {}  # weighted: per-chain weights, overriding ``weight``
    contrastive_weight: float = Field(0.1, gt=0)  # contrastive: weight of the InfoNCE term
    temperature: float = Field(0.5, gt=0)  # contrastive: InfoNCE temperature
    similarity: Literal["cos", "dot"] = "cos"  # contrastive: of the views' states (see train/contrastive.py)
    pretrain_epochs: int = Field(10, ge=1)  # pretrain: epochs on real + augmented before real only

    @model_validator(mode="after")
    def _mode_keys(self) -> "VariantConfig":
        owners = {"weight": "weighted", "chain_weights": "weighted", "contrastive_weight": "contrastive",
                  "temperature": "contrastive", "similarity": "contrastive", "pretrain_epochs": "pretrain"}
        defaults = {name: field.default for name, field in type(self).model_fields.items()}
        stray = sorted(k for k, mode in owners.items() if mode != self.consume and getattr(self, k) != defaults[k])
        if stray:
            raise ValueError(f"variant {self.name!r} consumes its rows as {self.consume!r}: {stray} belong to other "
                             f"modes ({', '.join(f'{k}: {owners[k]}' for k in stray)})")
        if any(w < 0 for w in self.chain_weights.values()):
            raise ValueError(f"variant {self.name!r}: chain_weights must be >= 0, got {self.chain_weights}")
        unknown = sorted(set(self.chain_weights) - set(self.chains)) if self.chains != "all" else []
        if unknown:
            raise ValueError(f"variant {self.name!r}: chain_weights names {unknown}, not among its chains "
                             f"{list(self.chains)}")
        return self

    def chain_weight(self, chain: str) -> float:
        """The loss weight of ``chain``'s rows (1 for every chain unless ``consume`` is ``weighted``)."""
        if self.consume != "weighted":
            return 1.0
        return float(self.chain_weights.get(chain, self.weight))

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        import re

        if value == "baseline" or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", value):
            raise ValueError("must be letters, digits, '_' or '-', and not 'baseline' (the real-rows-only arm)")
        return value

    @field_validator("chains")
    @classmethod
    def _normalised_chains(cls, value):
        if value == "all":
            return value
        chains = tuple(">".join(part.strip() for part in chain.split(">") if part.strip()) for chain in value)
        if not chains or not all(chains) or "real" in chains:
            raise ValueError("name at least one operator chain such as 'crop' or 'crop > mask' ('real' is always in)")
        return chains


class TrainStageConfig(TrainConfig):
    """The ``train`` stage: an experiment of a real-only baseline against augmented variants.

    The trainer's keys (``TrainConfig``) sit directly in this section. The defaults are an
    experiment small enough for ``recaug run`` on the embedded default (a few minutes on 2 cores);
    a study uses conf/experiments/*.yaml with more epochs and patience.
    """

    enabled: bool = True
    experiment: str = "default"  # recorded in the metrics table
    # The best policy found on the default shop (chosen on validation: docs/benchmarks.md): every chain's
    # rows for 3 epochs, then real rows only.
    variants: tuple[VariantConfig, ...] = (
        VariantConfig(name="augmented", chains="all", consume="pretrain", pretrain_epochs=3),)
    seeds: tuple[int, ...] = (1, 2, 3)  # every variant trains once per seed (same seeds for all)
    hidden: int = Field(32, ge=1)
    blocks: int = Field(1, ge=1)
    max_len: int = Field(30, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    attention_dropout: float = Field(0.2, ge=0, lt=1)
    # Softmax cross-entropy over every item: the strong baseline (issue 21's studies; docs/benchmarks.md).
    # lr 0.01 converges in about half the steps of 0.003 on the default shop, at least as well.
    loss: Literal["bce", "ce", "sampled_softmax"] = "ce"
    lr: float = Field(1e-2, gt=0)
    # × steps_per_epoch: the step budget of every variant. A cap only: patience stops the default
    # shop's runs near epoch 20, and the report flags any run that hits the cap.
    epochs: int = Field(60, ge=1)
    patience: int = Field(5, ge=1)
    num_threads: int | None = Field(1, ge=1)  # 1: robust when the cores are shared (oversubscribed threads stall)
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    num_processes: int = Field(1, ge=1)  # > 1: TorchDistributor ranks on the caller's Spark session
    # With num_processes 1: models (arm × seed) trained at once, a process each (same figures as one
    # after another). None: two on a machine with two cores or more, else one (``runs_at_once``).
    parallel_runs: int | None = Field(None, ge=1)
    quality: bool = True  # data-quality report (fidelity, diversity, privacy) of the pinned table
    report_dir: str | None = None  # default: <run.warehouse>/reports/<run id>

    @model_validator(mode="after")
    def _distinct_variants(self) -> "TrainStageConfig":
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be distinct, got {names}")
        if (self.parallel_runs or 1) > 1 and self.num_processes > 1:
            raise ValueError("parallel_runs > 1 trains whole models side by side; it needs num_processes 1")
        return self

    def runs_at_once(self) -> int:
        """How many models train side by side: ``parallel_runs``, or by default two where there are
        two cores or more and each model has one process (one torch thread each keeps them apart)."""
        import os

        if self.parallel_runs is not None:
            return self.parallel_runs
        return min(2, os.cpu_count() or 1) if self.num_processes == 1 else 1

    def trainer_config(self) -> TrainConfig:
        """The trainer's part of this section."""
        return TrainConfig(**{name: getattr(self, name) for name in TrainConfig.model_fields})


# ---------------------------------------------------------------- tune (policy search)

class ParamRange(_Section):
    """A searched value (``recaug tune``): ``choices`` (categorical), or ``low``..``high`` (integers when
    both bounds are integers; ``log`` scale; ``step`` a grid)."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ParamRange":
        ranged = self.low is not None or self.high is not None
        if (self.choices is None) == (not ranged):
            raise ValueError("give either choices: [...] or low and high")
        if self.choices is not None and not self.choices:
            raise ValueError("choices must name at least one value")
        if ranged and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"low and high must both be given with low <= high (got {self.low}, {self.high})")
        if self.log and ranged and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


SearchValue = ParamRange | bool | int | float | str | None  # a constant, or a ParamRange mapping


class TuneChainConfig(_Section):
    """A candidate branch of the policy search: an operator chain whose parameters, copies and
    targeting are constants or ranges (``ParamRange``)."""

    chain: str
    params: dict[str, dict[str, SearchValue]] = Field(default_factory=dict)  # operator -> parameter -> value
    copies: SearchValue = 1
    max_length: SearchValue = None
    cold_start_days: SearchValue = None
    long_tail_share: SearchValue = None

    @property
    def operators(self) -> list[str]:
        return [name.strip() for name in self.chain.split(">") if name.strip()]

    @property
    def name(self) -> str:
        """The chain as ``augmented_sequences.operator_chain`` spells it (``crop>mask``)."""
        return ">".join(self.operators)

    @model_validator(mode="after")
    def _known_operators(self) -> "TuneChainConfig":
        from recaug_spark.augment.registry import build

        if not self.operators:
            raise ValueError("chain is empty; write operator names joined by '>', e.g. 'crop > mask'")
        unused = sorted(set(self.params) - set(self.operators))
        if unused:
            raise ValueError(f"params given for {unused}, which are not in the chain {self.operators}")
        for name in self.operators:
            fields = set(type(build(name, None)).Params.model_fields)  # unknown operators fail here
            unknown = sorted(set(self.params.get(name, {})) - fields)
            if unknown:
                raise ValueError(f"operator {name!r} has no parameter(s) {unknown}; it has {sorted(fields)}")
        return self


class TuneSpaceConfig(_Section):
    """What ``recaug tune`` searches: which candidate chains are on (at most ``max_chains``; none at
    all is the real-only policy when ``include_none``), their parameters, and how the rows are
    consumed (``consume`` modes with their own settings, as in ``VariantConfig``)."""

    chains: tuple[TuneChainConfig, ...] = (
        TuneChainConfig(chain="crop", params={"crop": {"eta": ParamRange(low=0.3, high=0.9)}}),
        TuneChainConfig(chain="mask", params={"mask": {"gamma": ParamRange(low=0.1, high=0.5)}}),
        TuneChainConfig(chain="reorder", params={"reorder": {"beta": ParamRange(low=0.1, high=0.5)}}),
    )
    max_chains: int = Field(2, ge=1)
    include_none: bool = True  # the real-only policy is a point of the space: augmentation may not help
    consume: tuple[Literal["rows", "weighted", "contrastive", "pretrain"], ...] = ("rows", "weighted")
    weight: SearchValue = ParamRange(low=0.1, high=1.0, log=True)  # weighted
    contrastive_weight: SearchValue = ParamRange(low=0.02, high=0.5, log=True)  # contrastive
    temperature: SearchValue = 0.5  # contrastive
    pretrain_epochs: SearchValue = ParamRange(choices=(2, 5))  # pretrain

    @model_validator(mode="after")
    def _distinct(self) -> "TuneSpaceConfig":
        names = [c.name for c in self.chains]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"candidate chains must be distinct and at least one, got {names}")
        if not self.consume or len(set(self.consume)) != len(self.consume):
            raise ValueError(f"consume must list distinct modes, got {list(self.consume)}")
        return self


class TuneBudgetConfig(_Section):
    """How much the search may train: proxy trials (fewer epochs, a share of the users), ranked and
    pruned on validation; the best ``rerun_top`` re-run with the full budget."""

    n_trials: int = Field(12, ge=1)  # finished (complete or pruned) trials the study ends with
    proxy_epochs: int = Field(5, ge=1)
    proxy_user_share: float = Field(1.0, gt=0, le=1)  # users sampled (by a hash of user_id) for proxy trials
    full_epochs: int | None = Field(None, ge=1)  # None: train.epochs
    rerun_top: int = Field(3, ge=0)  # best proxy trials re-run with the full budget (rank correlation)
    n_jobs: int = Field(1, ge=1)  # trials at once, each worker a process on the study's storage
    pruner: Literal["median", "successive_halving", "none"] = "median"
    warmup_epochs: int = Field(2, ge=0)  # epochs before a trial may be pruned (median pruner)
    startup_trials: int = Field(3, ge=0)  # random trials before TPE and pruning start


class TuneConfig(_Section):
    """``recaug tune``: the augmentation-policy search on the validation split (docs/tuning.md)."""

    name: str = "default"  # the study: its folder, its rows in tune_trials, conf/tuned/<name>.yaml
    dir: str | None = None  # storage, runs and report; default <run.warehouse>/tune/<name>
    output: str | None = None  # the best policy's config layer; default conf/tuned/<name>.yaml
    sampler_seed: int = 0
    train_seed: int = 1  # every trial trains with this seed (the same initial weights)
    space: TuneSpaceConfig = TuneSpaceConfig()
    budget: TuneBudgetConfig = TuneBudgetConfig()
    confirm_seeds: tuple[int, ...] = (1, 2, 3)  # test confirmation, paired by seed against the baseline

    @field_validator("name")
    @classmethod
    def _usable_name(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]*", value):
            raise ValueError("must be letters, digits, '_' or '-'")
        return value

    @field_validator("confirm_seeds")
    @classmethod
    def _three_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) < 3:
            raise ValueError(f"the confirmation needs at least 3 distinct seeds, got {list(value)}")
        return value


# ---------------------------------------------------------------- fit (generator models)

GENERATORS = ("reverse_transformer", "forward_transformer", "item_attributes", "description_index")


class FitConfig(_Section):
    """Generator models trained by ``recaug fit`` (artifacts in ``run.models``) for model-based augmenters."""

    enabled: bool = True
    generators: tuple[Literal[GENERATORS], ...] = GENERATORS  # which ones to fit
    reverse_transformer: SequenceGeneratorConfig = SequenceGeneratorConfig(direction="reverse")
    forward_transformer: SequenceGeneratorConfig = SequenceGeneratorConfig(direction="forward")
    item_attributes: AttributeGeneratorConfig = AttributeGeneratorConfig()
    description_index: DescriptionConfig = DescriptionConfig()
    # With two cores or more, the sequence Transformers train in worker processes while the driver fits
    # the item generators (the same weights as one after another).
    parallel: bool = True

    @model_validator(mode="after")
    def _directions(self) -> "FitConfig":
        for name, direction in (("reverse_transformer", "reverse"), ("forward_transformer", "forward")):
            if getattr(self, name).direction != direction:
                raise ValueError(f"fit.{name}.direction must be '{direction}'")
        return self


STAGES = ("generate", "ingest", "clean", "fit", "augment", "train")


class PipelineConfig(_Section):
    until: Literal[STAGES] = "train"


class Config(_Section):
    run: RunConfig = RunConfig()
    spark: SparkConfig = SparkConfig()
    cluster: ClusterConfig = ClusterConfig()
    delta: DeltaConfig = DeltaConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    fit: FitConfig = FitConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainStageConfig = TrainStageConfig()
    tune: TuneConfig = TuneConfig()  # recaug tune (docs/tuning.md)
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _inputs_match_format(self) -> "Config":
        catalog_only = self.ingest.items and self.ingest.format in ("csv", "parquet", "json", "delta")
        if self.ingest.format != "generated" and not self.ingest.events and not catalog_only:
            raise ValueError(f"ingest.events is required when ingest.format is '{self.ingest.format}' (a catalog "
                             f"alone: ingest.items with format csv, parquet, json or delta)")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Short content hash of the effective config (recorded with every run)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def with_overrides(self, **dotted: Any) -> "Config":
        """A copy with ``section.key=value`` overrides applied and validated again."""
        data = self.model_dump(mode="python")
        for key, value in dotted.items():
            _set_dotted(data, key.replace("__", "."), value)
        return validate(data)


def _set_dotted(data: dict, dotted_key: str, value: Any) -> None:
    node = data
    parts = dotted_key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted_key}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict, layer: Mapping) -> dict:
    merged = dict(base)
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` → ("a.b", value) with value parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like section.key=value")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            section = _section_at(item["loc"][:-1])
            allowed = sorted(section.model_fields) if section else []
            message = f"unknown key; allowed keys here: {allowed}"
        lines.append(f"  {key}: {message}")
    return "invalid configuration:\n" + "\n".join(lines)


def _section_at(path: Sequence) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def validate(data: Mapping[str, Any]) -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as error:
        raise ConfigError(_describe(error)) from None


def load_config(paths: Sequence[str | Path] = (), overrides: Sequence[str] = (), *, include_base: bool = True) -> Config:
    """Merge ``conf/base.yaml``, each file in ``paths``, then the ``key=value`` overrides.

    ``conf/base.yaml`` spells out the model defaults (a test keeps them equal), so a zipped package
    shipped with ``--py-files`` and no ``conf/`` folder behaves the same.
    """
    base = PACKAGE_CONF_DIR / "base.yaml"
    files = ([base] if include_base and base.is_file() else []) + [Path(p) for p in paths]
    merged: dict = {}
    for path in files:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        layer = yaml.safe_load(path.read_text()) or {}
        if not isinstance(layer, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        merged = _deep_merge(merged, layer)
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(merged, key, value)
    return validate(merged)

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

PACKAGE_CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the allowed values."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(_Section):
    seed: int = 42
    warehouse: str = "./warehouse"
    run_id: str | None = None  # default: a fresh id per run; pass one to make a retry idempotent


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
    """A local Spark standalone cluster started by ``recaug cluster start``."""

    work_dir: str = "./.recaug/cluster"
    master_port: int = 7077
    master_webui_port: int = 8080
    workers: int = Field(1, ge=1)
    cores_per_worker: int = Field(2, ge=1)
    memory_per_worker: str = "4g"


class DeltaConfig(_Section):
    backend: Literal["auto", "native", "deltalake"] = "auto"


class MessConfig(_Section):
    """Planted mess, so that ingest and clean have real work on the embedded default."""

    duplicate_rate: float = Field(0.02, ge=0, le=1)
    near_duplicate_rate: float = Field(0.01, ge=0, le=1)
    bad_row_rate: float = Field(0.002, ge=0, le=1)
    bot_users: int = Field(3, ge=0)
    bot_events_per_user: int = Field(2000, ge=1)
    return_rate: float = Field(0.05, ge=0, le=1)
    missing_item_price_rate: float = Field(0.05, ge=0, le=1)


class GenerateConfig(_Section):
    events: int = Field(100_000, ge=1_000)
    items: int = Field(2_000, ge=10)
    categories: int = Field(12, ge=1)
    users: int | None = Field(None, ge=1)  # default: events / 20
    partitions: int = Field(8, ge=1)
    start_date: str = "2024-01-01"
    days: int = Field(90, ge=1)
    zipf_exponent: float = Field(1.05, gt=0)
    user_activity_alpha: float = Field(1.6, gt=1)  # Pareto tail of events per user
    mess: MessConfig = MessConfig()
    output: str | None = None  # default: <warehouse>/_source/generated


IngestFormat = Literal["generated", "csv", "parquet", "json", "delta", "online-retail", "amazon-5core", "diginetica"]


class PseudonymizeConfig(_Section):
    key_env: str = "RECAUG_PSEUDONYM_KEY"
    key_file: str | None = None
    ids_already_anonymous: bool = False


class IngestConfig(_Section):
    format: IngestFormat = "generated"
    events: str | None = None  # path (file, folder or glob) of the clickstream
    items: str | None = None  # path of the catalog; None derives items from events where the format can
    events_columns: dict[str, str] = Field(default_factory=dict)  # canonical name -> source column
    items_columns: dict[str, str] = Field(default_factory=dict)
    csv_separator: str = ","
    csv_header: bool = True
    timestamp_format: str | None = None  # Spark datetime pattern; None = ISO-8601
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


class BotConfig(_Section):
    max_events_per_minute: int = Field(60, ge=1)
    max_events_per_day: int = Field(1_000, ge=1)


class SplitConfig(_Section):
    strategy: Literal["leave_one_out", "time_fraction"] = "leave_one_out"
    valid_fraction: float = Field(0.1, gt=0, lt=1)  # time_fraction only
    test_fraction: float = Field(0.1, gt=0, lt=1)
    min_train_items: int = Field(1, ge=1)


class CleanConfig(_Section):
    near_duplicate_seconds: int = Field(10, ge=0)
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


STAGES = ("generate", "ingest", "clean")


class PipelineConfig(_Section):
    until: Literal["generate", "ingest", "clean"] = "clean"


class Config(_Section):
    run: RunConfig = RunConfig()
    spark: SparkConfig = SparkConfig()
    cluster: ClusterConfig = ClusterConfig()
    delta: DeltaConfig = DeltaConfig()
    generate: GenerateConfig = GenerateConfig()
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _inputs_match_format(self) -> "Config":
        if self.ingest.format != "generated" and not self.ingest.events:
            raise ValueError(f"ingest.events is required when ingest.format is '{self.ingest.format}'")
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

"""The ``recaug`` command: ``run`` (the main job), one command per stage, ``experiment``, ``tune``,
``report``, ``export``, ``cluster``, ``config``.

The config is resolved and validated completely — including the pseudonymization key — before any
Spark process starts, so a typo costs milliseconds, not a JVM start.
"""

from __future__ import annotations

import functools
import sys
from typing import Sequence

import click

from recaug_spark.config import STAGES, Config, ConfigError, load_config

# CLI flags that are shorthands for config keys.
_SHORTHANDS = {
    "input_format": "ingest.format",
    "input": "ingest.events",
    "items": "ingest.items",
    "warehouse": "run.warehouse",
    "run_id": "run.run_id",
    "master": "spark.master",
    "seed": "run.seed",
}


def config_options(command):
    """Options shared by every command that runs a job."""
    options = [
        click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False),
                     help="YAML config layered over conf/base.yaml (repeatable; later files win)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override one key, e.g. --set generate.events=1000000 (repeatable)."),
        click.option("--input-format", type=click.Choice(["generated", "csv", "parquet", "json", "delta",
                                                          "online-retail", "amazon-5core", "diginetica"]),
                     help="Source format (ingest.format); 'generated' is the built-in shop."),
        click.option("--input", help="Clickstream path: file, folder or glob (ingest.events)."),
        click.option("--items", help="Catalog path (ingest.items); omitted = derived from events where possible."),
        click.option("--warehouse", help="Warehouse folder or URI for the Delta tables (run.warehouse)."),
        click.option("--run-id", help="Run id; re-running with the same id commits nothing twice."),
        click.option("--master", help="Spark master (spark.master): local[*], spark://host:port, or submit."),
        click.option("--seed", type=int, help="Global seed (run.seed)."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def resolve_config(configs: Sequence[str], sets: Sequence[str], **shorthands) -> Config:
    overrides = [f"{_SHORTHANDS[name]}={value}" for name, value in shorthands.items()
                 if name in _SHORTHANDS and value is not None]
    if shorthands.get("input") and not shorthands.get("input_format"):
        raise ConfigError("--input needs --input-format (csv, parquet, json, delta, online-retail, amazon-5core, diginetica)")
    return load_config(configs, [*overrides, *sets])


def order_only_conflict(cfg: Config, stages: Sequence[str]) -> str | None:
    """The refusal for branches that read time when ``stages`` augment an order-only source (its
    timestamps are positions, docs/pipeline.md), or None. The augment stage checks the warehouse's
    order-only mark too, for warehouses ingested earlier."""
    from recaug_spark.sources import ORDER_ONLY_FORMATS

    if "augment" not in stages or cfg.ingest.format not in ORDER_ONLY_FORMATS:
        return None
    from recaug_spark.augment.registry import time_based_uses

    uses = time_based_uses(cfg.augment.branches)
    if not uses:
        return None
    return (f"ingest.format {cfg.ingest.format!r} has no real timestamps (order only), but "
            f"{'; '.join(uses)}: remove them from augment.branches")


def _check_before_spark(cfg: Config, stages: Sequence[str]) -> None:
    from recaug_spark.preflight import check_paths

    check_paths(cfg, stages)  # inputs, warehouse, models dir: one line and exit 2, before any JVM
    conflict = order_only_conflict(cfg, stages)
    if conflict:
        raise ConfigError(conflict)
    if "ingest" in stages:
        from recaug_spark.stages.ingest import resolve_pseudonym_key

        resolve_pseudonym_key(cfg.ingest)


def _execute(cfg: Config, stages: list[str]) -> None:
    from recaug_spark.pipeline import run_stages, summary
    from recaug_spark.runs import RunContext
    from recaug_spark.session import get_session

    _check_before_spark(cfg, stages)
    spark = get_session(cfg.spark)
    try:
        ctx = RunContext.create(spark, cfg)
        click.echo(f"recaug-spark: stages {' → '.join(stages)}; config hash {cfg.hash}; Delta backend {ctx.warehouse.backend}")
        results = run_stages(ctx, stages, echo=click.echo)
        click.echo(summary(ctx, results))
    finally:
        spark.stop()


class _FriendlyErrors(click.Group):
    """Config and input errors print one clear message and exit 2, without a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ConfigError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except Exception as error:  # noqa: BLE001 - only our own error types are shown plainly
            if type(error).__module__.startswith("recaug_spark") and getattr(error, "user_facing", True):
                click.echo(f"error: {type(error).__name__}: {error}", err=True)
                sys.exit(2)
            raise


@click.group(cls=_FriendlyErrors)
def main():
    """recaug-spark: distributed augmentation of e-commerce recommendation data on Spark + Delta."""


@main.command()
@config_options
@click.option("--until", type=click.Choice(list(STAGES)), help="Last stage to run (pipeline.until).")
def run(configs, sets, until, **shorthands):
    """The main job: generate (when no --input) → ingest → clean → fit → augment → train, with a summary at the end."""
    from recaug_spark.pipeline import planned_stages

    cfg = resolve_config(configs, sets, **shorthands)
    _execute(cfg, planned_stages(cfg, until))


def _stage_command(stage: str):
    @config_options
    def command(configs, sets, **shorthands):
        cfg = resolve_config(configs, sets, **shorthands)
        _execute(cfg, [stage])

    command.__doc__ = f"Run only the {stage} stage of the pipeline (later stages read the earlier ones' tables)."
    return main.command(name=stage)(command)


for _stage in STAGES:
    if _stage != "augment":
        _stage_command(_stage)


@main.command("augment")
@config_options
@click.option("--incremental", is_flag=True,
              help="Re-augment only users whose training sequence changed since the last augment run "
                   "(augment.incremental); every other row stays as it is.")
def augment_command(configs, sets, incremental, **shorthands):
    """Run only the augment stage: augmented_sequences and augmented_items from sequences and items."""
    if incremental:
        sets = (*sets, "augment.incremental=true")
    cfg = resolve_config(configs, sets, **shorthands)
    _execute(cfg, ["augment"])


@main.command("experiment")
@click.argument("experiment_yaml", type=click.Path(exists=True, dir_okay=False))
@config_options
def experiment_command(experiment_yaml, configs, sets, **shorthands):
    """Run the train stage as the experiment EXPERIMENT_YAML describes (e.g. conf/experiments/ablation.yaml).

    The file is a config layer applied after the --config files (its train section names the
    variants, seeds and budget); --set overrides still win. The experiment is named after the
    file unless it sets train.experiment.
    """
    from pathlib import Path

    import yaml

    layer = yaml.safe_load(Path(experiment_yaml).read_text()) or {}
    named = isinstance(layer, dict) and isinstance(layer.get("train"), dict) and "experiment" in layer["train"]
    name = [] if named else [f"train.experiment={Path(experiment_yaml).stem}"]
    cfg = resolve_config((*configs, experiment_yaml), (*name, *sets), **shorthands)
    _execute(cfg, ["train"])


@main.command("tune")
@click.argument("tune_yaml", type=click.Path(exists=True, dir_okay=False))
@config_options
@click.option("--report", "report", is_flag=True, help="Only render the report from tune_trials (no training).")
@click.option("--confirm", "confirm_test", is_flag=True,
              help="Test the written best policy once against the baseline, paired by seed (tune.confirm_seeds).")
def tune_command(tune_yaml, configs, sets, report, confirm_test, **shorthands):
    """Search the augmentation policy on the validation split as TUNE_YAML describes (e.g. conf/tune/default.yaml);
    writes conf/tuned/<name>.yaml and a report (docs/tuning.md). Resumes an interrupted study."""
    from recaug_spark.tune.runner import tune_command as run

    cfg = resolve_config((*configs, tune_yaml), sets, **shorthands)
    run(cfg, report=report, confirm_test=confirm_test, echo=click.echo)


@main.command("report")
@click.argument("table", default="augmented_sequences")
@config_options
@click.option("--version", "table_version", type=int, help="Table version (default: the latest).")
@click.option("--catalog", default="items", show_default=True,
              help="Table whose row count is the catalog size (coverage, Gini); '' = the items seen in TABLE.")
def report_command(table, configs, sets, table_version, catalog, **shorthands):
    """Print the data-quality report (fidelity, diversity, privacy) of an augmented TABLE (name or path)."""
    from recaug_spark.delta import Warehouse
    from recaug_spark.session import get_session
    from recaug_spark.train.quality import quality_markdown, quality_report

    cfg = resolve_config(configs, sets, **shorthands)
    spark = get_session(cfg.spark)
    try:
        warehouse = Warehouse(spark, cfg.run.warehouse, cfg.delta.backend)
        catalog_size = warehouse.read(catalog).count() if catalog and warehouse.exists(catalog) else None
        version = warehouse.version(table) if table_version is None else table_version
        quality = quality_report(warehouse.read(table, version=version), catalog_size=catalog_size,
                                 head_share=cfg.train.head_item_share)
        click.echo(quality_markdown(quality, f"Data quality of {table} (version {version})"))
    finally:
        spark.stop()


def _comma_list(_ctx, _param, value):
    return None if value is None else tuple(v.strip() for v in value.split(",") if v.strip())


@main.command("export")
@click.argument("table", default="augmented_sequences")
@click.option("--format", "fmt", type=click.Choice(["parquet", "lines", "recbole"]), required=True,
              help="parquet: long form (seq_id, position, item_id, … and provenance); lines: 'seq_id item item …' "
                   "per line; recbole: a RecBole atomic .inter file.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output file (recbole: <name>.inter).")
@click.option("--warehouse", help="Warehouse folder or URI (default: run.warehouse of the config).")
@click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False),
              help="YAML config layered over conf/base.yaml (only run.warehouse is read).")
@click.option("--version", "table_version", type=int, help="Table version to read (default: the latest).")
@click.option("--origins", callback=_comma_list, help="Origins to keep, comma-separated (default: all of the "
              "table's: real,augmented,synthetic).")
@click.option("--no-real", is_flag=True, help="Drop the real rows (origin 'real').")
@click.option("--chains", callback=_comma_list, help="Keep only these operator_chain values, comma-separated.")
@click.option("--mask", default="drop", show_default=True,
              help="The mask token in item_ids: drop | keep | map:<token>.")
@click.option("--min-length", type=int, default=1, show_default=True,
              help="Drop sequences with fewer items (after mask tokens are dropped).")
@click.option("--timestamp", type=click.Choice(["position", "event"]), default="position", show_default=True,
              help="recbole: the timestamp column: position (keeps the exported order) or event time (epoch s).")
@click.option("--integer-ids", is_flag=True, help="lines: items as integers 1..N (the mask token N+1), for loaders "
              "that parse int(item); the map is saved as OUT.vocab.json.")
def export_command(table, fmt, out, warehouse, configs, table_version, origins, no_real, chains, mask, min_length,
                   timestamp, integer_ids):
    """Export an augmented sequence TABLE (name or path) to files any trainer reads, without Spark.

    Prints rows read, written and dropped by reason; docs/consuming.md explains the options.
    """
    from recaug_spark.delta import resolve_uri
    from recaug_spark.export import ExportOptions, export_table

    root = warehouse or load_config(configs).run.warehouse
    options = ExportOptions(fmt, origins=origins, no_real=no_real, mask=mask, min_length=min_length, chains=chains,
                            version=table_version, timestamp=timestamp, integer_ids=integer_ids)
    summary = export_table(resolve_uri(table, root), out, options, name=table)
    click.echo(summary.line())
    for note in summary.notes():
        click.echo(note, err=True)


@main.command("vacuum")
@config_options
@click.option("--retention-hours", type=int, default=None,
              help="Keep removed files this long (default: the table's delta.deletedFileRetentionDuration, 7 days).")
@click.option("--orphan-age-minutes", type=float, default=10.0, show_default=True,
              help="Delete unreferenced files only when older than this (a running writer's files are younger).")
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
def vacuum_command(configs, sets, retention_hours, orphan_age_minutes, dry_run, **shorthands):
    """Delete orphans of crashed writes and expired removed files in every table of the warehouse
    (no Spark). The versions that the last complete stage records name stay readable."""
    from recaug_spark.delta import vacuum_table, warehouse_tables
    from recaug_spark.runs import last_records, stage_records

    cfg = resolve_config(configs, sets, **shorthands)
    root = cfg.run.warehouse.rstrip("/")
    pinned: dict[str, set[int]] = {}
    for record in last_records(stage_records(f"{root}/runs")).values():
        for table, version in record["tables"].items():
            pinned.setdefault(table, set()).add(int(version))
    for uri in warehouse_tables(root):
        report = vacuum_table(uri, keep_versions=pinned.get(uri.rsplit("/", 1)[-1], ()),
                              retention_hours=retention_hours, min_age_s=orphan_age_minutes * 60, dry_run=dry_run)
        click.echo(("[dry run] " if dry_run else "") + report.line())


@main.command("runs")
@config_options
def runs_command(configs, sets, **shorthands):
    """List each stage of each run (only --run-id's when given): finished, or started and never finished
    (it crashed, or it still runs: the driver host:pid is shown), with its attempts (no Spark)."""
    from recaug_spark.runs import STARTS, listing_line, stage_listing, stage_records, start_records

    cfg = resolve_config(configs, sets, **shorthands)
    root = cfg.run.warehouse.rstrip("/")
    entries = stage_listing(stage_records(f"{root}/runs"), start_records(f"{root}/{STARTS}"))
    for entry in entries:
        if cfg.run.run_id in (None, entry["run_id"]):
            click.echo(listing_line(entry))


@main.command("augmenters")
@click.option("--markdown", is_flag=True, help="Print the Markdown reference (docs/augmenters.md).")
def list_augmenters(markdown):
    """List every augmenter usable in config: name, what it does, parameters and defaults."""
    from recaug_spark.augment.catalog import reference_markdown

    text = reference_markdown()
    if not markdown:
        text = "\n".join(line for line in text.splitlines() if not line.startswith("|---")) + "\n"
    click.echo(text, nl=False)


@main.command("config")
@config_options
def show_config(configs, sets, **shorthands):
    """Print the effective config (YAML) and its hash, without starting Spark."""
    import yaml

    cfg = resolve_config(configs, sets, **shorthands)
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip())
    click.echo(f"# config hash: {cfg.hash}")


@main.group()
def cluster():
    """A local Spark standalone cluster on 127.0.0.1 (master + workers), from the installed pyspark."""


def _cluster_config(configs, sets):
    return load_config(configs, sets).cluster


_cluster_options = [
    click.option("--config", "configs", multiple=True, type=click.Path(dir_okay=False)),
    click.option("--set", "sets", multiple=True, metavar="KEY=VALUE"),
]


def _with_cluster_options(command):
    return functools.reduce(lambda cmd, option: option(cmd), reversed(_cluster_options), command)


@cluster.command("start")
@_with_cluster_options
def cluster_start(configs, sets):
    """Start the master and cluster.workers workers; print the master URL to use as spark.master."""
    from recaug_spark.cluster import format_status, start_cluster

    click.echo(format_status(start_cluster(_cluster_config(configs, sets))))


@cluster.command("stop")
@_with_cluster_options
def cluster_stop(configs, sets):
    """Stop the workers, then the master, started by `recaug cluster start`."""
    from recaug_spark.cluster import format_stopped, stop_cluster

    click.echo(format_stopped(stop_cluster(_cluster_config(configs, sets))))


@cluster.command("status")
@_with_cluster_options
def cluster_status_command(configs, sets):
    """Show the master and workers: PIDs, liveness and URLs."""
    from recaug_spark.cluster import cluster_status, format_status

    click.echo(format_status(cluster_status(_cluster_config(configs, sets))))


if __name__ == "__main__":
    main()

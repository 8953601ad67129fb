"""The ``recaug`` command: ``run`` (the main job), one command per stage, ``experiment``, ``report``,
``cluster``, ``config``.

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


def _check_before_spark(cfg: Config, stages: Sequence[str]) -> None:
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

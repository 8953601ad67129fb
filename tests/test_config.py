"""Configuration: layering, validation errors that name the key, the hash, and the CLI's early exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import yaml
from click.testing import CliRunner

from recaug_spark.cli import main
from recaug_spark.config import PACKAGE_CONF_DIR, Config, ConfigError, load_config


def test_base_yaml_spells_out_the_model_defaults():
    # A package shipped without conf/ (spark-submit --py-files) must behave exactly the same.
    assert load_config() == Config()


@pytest.mark.parametrize(("name", "master"), [
    ("local.yaml", "local[*]"),  # the masters the files set (conf/*.yaml, spark.master)
    ("standalone.yaml", "spark://127.0.0.1:7077"),
    ("cluster.yaml", "submit"),
])
def test_every_shipped_layer_validates(name, master):
    cfg = load_config([PACKAGE_CONF_DIR / name])
    assert cfg.spark.master == master
    layer = yaml.safe_load((PACKAGE_CONF_DIR / name).read_text())
    for section, values in layer.items():  # every key the layer sets is what the config holds
        for key, value in values.items():
            held = getattr(getattr(cfg, section), key)
            assert (held.model_dump() if hasattr(held, "model_dump") else held) == value, (section, key)


@pytest.mark.parametrize("layer", sorted(p.relative_to(PACKAGE_CONF_DIR).as_posix() for p in
                                         [*PACKAGE_CONF_DIR.glob("experiments/*.yaml"),
                                          *PACKAGE_CONF_DIR.glob("tune/*.yaml")]))
def test_every_shipped_experiment_and_tune_layer_validates(layer):
    data = yaml.safe_load((PACKAGE_CONF_DIR / layer).read_text())
    cfg = load_config([PACKAGE_CONF_DIR / layer])
    section = "tune" if layer.startswith("tune/") else "train"
    assert section in data  # the layer sets what its folder says it sets
    if section == "tune":
        assert cfg.tune.name == data["tune"]["name"] == Path(layer).stem  # its study folder and conf/tuned/<name>.yaml


def test_layers_apply_in_order_and_overrides_win(tmp_path):
    first = tmp_path / "a.yaml"
    second = tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump({"generate": {"events": 5000, "items": 300}}))
    second.write_text(yaml.safe_dump({"generate": {"events": 7000}}))
    cfg = load_config([first, second], ["generate.categories=3", "clean.split.strategy=time_fraction"])
    assert (cfg.generate.events, cfg.generate.items, cfg.generate.categories) == (7000, 300, 3)
    assert cfg.clean.split.strategy == "time_fraction"
    assert cfg.clean.session_gap_minutes == 30  # untouched keys keep base values


def test_unknown_key_is_named_with_the_allowed_keys():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["clean.sesion_gap_minutes=5"])
    message = str(error.value)
    assert "clean.sesion_gap_minutes" in message and "session_gap_minutes" in message


def test_bad_value_names_the_key_and_the_allowed_values():
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["delta.backend=parquet"])
    assert "delta.backend" in str(error.value) and "'deltalake'" in str(error.value)
    with pytest.raises(ConfigError, match="generate.events"):
        load_config(overrides=["generate.events=-5"])
    with pytest.raises(ConfigError, match="sequence_event_types"):
        load_config(overrides=["clean.sequence_event_types=[view, click]"])


def test_unknown_canonical_column_in_mapping_is_rejected():
    with pytest.raises(ConfigError, match="user"):
        load_config(overrides=["ingest.format=csv", "ingest.events=x.csv", "ingest.events_columns={user: uid}"])


def test_external_format_requires_an_input_path():
    with pytest.raises(ConfigError, match="ingest.events is required"):
        load_config(overrides=["ingest.format=csv"])


def test_config_is_frozen_and_hash_tracks_content():
    cfg = load_config()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.run.seed = 1  # type: ignore[misc]
    assert cfg.hash == load_config().hash
    assert cfg.hash != load_config(overrides=["run.seed=7"]).hash
    assert cfg.with_overrides(**{"run.seed": 7}).hash == load_config(overrides=["run.seed=7"]).hash


def test_missing_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])


def test_cli_rejects_a_bad_key_before_spark_starts():
    result = CliRunner().invoke(main, ["run", "--set", "spark.mastr=local[2]"])
    assert result.exit_code == 2
    assert "spark.mastr" in result.output and "allowed keys" in result.output


def test_cli_config_error_costs_no_jvm():
    # In a fresh interpreter, a bad config must exit before any JVM gateway is launched.
    code = (
        "from pyspark import SparkContext\n"
        "from recaug_spark.cli import main\n"
        "try:\n    main(['run', '--set', 'delta.backend=nope'])\n"
        "except SystemExit as e:\n    print('exit', e.code, 'gateway', SparkContext._gateway is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "exit 2 gateway False" in out.stdout, out.stdout + out.stderr


def test_cli_config_command_prints_effective_config_and_hash():
    result = CliRunner().invoke(main, ["config", "--set", "generate.events=12345"])
    assert result.exit_code == 0, result.output
    assert "events: 12345" in result.output
    assert load_config(overrides=["generate.events=12345"]).hash in result.output


def test_variant_consumption_modes_take_only_their_own_keys():
    from recaug_spark.config import VariantConfig

    weighted = VariantConfig(name="w", chains=["crop", "mask"], consume="weighted", weight=0.5,
                             chain_weights={"crop": 0.2})
    assert (weighted.chain_weight("crop"), weighted.chain_weight("mask")) == (0.2, 0.5)
    assert VariantConfig(name="r", chains=["crop"]).chain_weight("crop") == 1.0
    with pytest.raises(ValueError, match="temperature"):
        VariantConfig(name="r", chains=["crop"], temperature=0.2)  # a contrastive key on a rows variant
    with pytest.raises(ValueError, match="not among its chains"):
        VariantConfig(name="w", chains=["crop"], consume="weighted", chain_weights={"mask": 1.0})
    with pytest.raises(ValueError, match="consume"):
        VariantConfig(name="x", consume="dropout")

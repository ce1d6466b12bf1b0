"""Every command line maps flags to settings the same way (dtmon.cliopts)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from dtmon.cli import app as dtmon_app
from dtmon.cliopts import settings_from
from dtmon.settings import Settings
from processor.cli import app as processor_app
from producer.cli import app as producer_app


def commands() -> dict[str, typer.core.TyperCommand]:
    group = typer.main.get_command(dtmon_app)
    return {"dtmon up": group.commands["up"], "producer": typer.main.get_command(producer_app),
            "processor": typer.main.get_command(processor_app)}


def test_a_setting_has_one_flag_named_after_it_in_every_command():
    seen = 0
    for name, command in commands().items():
        for param in command.params:
            field = param.name.removesuffix("_alias")
            if field not in Settings.model_fields:
                continue
            seen += 1
            if param.name.endswith("_alias"):
                assert param.hidden, f"{name}: the old spelling {param.opts} must not show in --help"
            else:
                assert param.opts == [f"--{field.replace('_', '-')}"], f"{name}: {param.opts} for {field}"
                assert f"DTMON_{field.upper()}" in param.help
    assert seen >= 25


def test_old_spellings_fill_the_setting_and_the_new_one_wins():
    settings = settings_from({"raw_topic": None, "raw_topic_alias": "old", "rate": 5.0, "other": 1})
    assert settings.raw_topic == "old" and settings.rate == 5.0
    assert settings_from({"raw_topic": "new", "raw_topic_alias": "old"}).raw_topic == "new"
    with pytest.raises(typer.Exit) as info:
        settings_from({"rate": -1.0})
    assert info.value.exit_code == 2


@pytest.mark.parametrize("app,args", [(dtmon_app, ["--version"]), (producer_app, ["--version"]), (processor_app, ["--version"])])
def test_every_command_prints_its_version(app, args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and result.output.startswith("dtmon ")


def test_processor_parses_old_and_new_master_flags():
    command = typer.main.get_command(processor_app)
    old = command.make_context("processor", ["--master", "spark://a:7077", "--trigger-interval", "1"])
    new = command.make_context("processor", ["--spark-master", "spark://b:7077", "--trigger-interval-s", "3"])
    assert settings_from(old.params).spark_master == "spark://a:7077" and settings_from(old.params).trigger_interval_s == 1
    assert settings_from(new.params).spark_master == "spark://b:7077" and settings_from(new.params).trigger_interval_s == 3

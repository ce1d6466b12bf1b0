"""The declarative checks file: shipped defaults, user overrides merged key by key, one-line errors naming the key."""

from __future__ import annotations

import pytest

from dtmon.checks_config import ChecksConfigError, default_checks_text, load_checks_config


def test_shipped_file_sets_every_threshold():
    """Every field of the model appears in the shipped TOML (no threshold hides in code)."""
    import tomllib

    from dtmon.checks_config import ChecksConfig

    shipped = tomllib.loads(default_checks_text())
    for section, model in ChecksConfig.model_fields.items():
        assert set(shipped[section]) == set(model.annotation.model_fields), section
    cfg = load_checks_config()
    assert cfg.dead_channels.p_value == 1e-3 and cfg.time_box.expected_v_drift_um_per_ns == 53.8


def test_user_file_overrides_only_its_keys(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[time_box]\nmin_tagged_hits = 50\n[window]\nbatches = 5\n")
    cfg = load_checks_config(path)
    assert (cfg.time_box.min_tagged_hits, cfg.window.batches) == (50, 5)
    assert cfg.time_box.t0_bad_ns == load_checks_config().time_box.t0_bad_ns


@pytest.mark.parametrize(("text", "message"), [
    ("[time_box]\nmin_tagged_hits = -5\n", "checks.toml: time_box.min_tagged_hits: must be >= 1, got -5"),
    ("[time_box]\nmin_taged_hits = 5\n", "checks.toml: time_box.min_taged_hits: unknown key"),
    ("[noisy_channels]\nfactor_off = 9.0\n", "checks.toml: noisy_channels: need factor_off <= factor_on"),
    ("[rate]\nwarning_min_hz = 'fast'\n", "checks.toml: rate.warning_min_hz: "),
    ("[rate\n", "checks.toml: not valid TOML"),
])
def test_bad_file_gives_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "checks.toml"
    path.write_text(text)
    with pytest.raises(ChecksConfigError) as err:
        load_checks_config(path)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ChecksConfigError, match="cannot read checks file"):
        load_checks_config(tmp_path / "nope.toml")

"""Thresholds of the data-quality checks: the shipped ``dtmon/checks.toml``, optionally merged
with a user file, validated by pydantic.

``load_checks_config(path)`` is the one entry point; a bad file raises ``ChecksConfigError``
with a one-line message naming the file and key, e.g.
``checks.toml: time_box.min_tagged_hits: must be >= 1, got -5``.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_CHECKS_FILE = "checks.toml"
"""Name of the shipped file inside the ``dtmon`` package."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class WindowConfig(_Section):
    """The check window: last ``batches`` micro-batches, or fewer once they hold ``hits`` chamber hits (0: no hit limit)."""

    batches: int = Field(30, ge=1, le=100_000)
    hits: int = Field(0, ge=0)
    reset_on_run_start: bool = True
    reset_on_orbit_jump: bool = True


class RateConfig(_Section):
    """Chamber rate in Hz of detector time: a band, or a relative tolerance around the reference's rate."""

    min_detector_time_s: float = Field(0.05, ge=0)
    warning_min_hz: float = Field(50.0, ge=0)
    warning_max_hz: float = Field(20_000.0, gt=0)
    bad_min_hz: float = Field(1.0, ge=0)
    bad_max_hz: float = Field(100_000.0, gt=0)
    reference_warning_tolerance: float = Field(0.3, gt=0)
    reference_bad_tolerance: float = Field(0.6, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "RateConfig":
        if not self.bad_min_hz <= self.warning_min_hz < self.warning_max_hz <= self.bad_max_hz:
            raise ValueError("need bad_min_hz <= warning_min_hz < warning_max_hz <= bad_max_hz")
        if self.reference_bad_tolerance < self.reference_warning_tolerance:
            raise ValueError("need reference_warning_tolerance <= reference_bad_tolerance")
        return self


class DeadChannelsConfig(_Section):
    """Dead channel: zero hits while Poisson P(0 | chamber mean) < ``p_value``."""

    p_value: float = Field(1e-3, gt=0, lt=1)
    warning_at: int = Field(1, ge=1)
    bad_at: int = Field(4, ge=1)


class NoisyChannelsConfig(_Section):
    """Noisy channel with hysteresis: on above ``factor_on`` x chamber median, off below ``factor_off`` x median."""

    factor_on: float = Field(5.0, gt=1)
    factor_off: float = Field(3.0, gt=1)
    min_median_hits: float = Field(5.0, gt=0)
    warning_at: int = Field(1, ge=1)
    bad_at: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _hysteresis(self) -> "NoisyChannelsConfig":
        if self.factor_off > self.factor_on:
            raise ValueError("need factor_off <= factor_on")
        return self


class TimeBoxConfig(_Section):
    """Time-box fit acceptance: expected t0 and drift velocity with warning / bad tolerances."""

    min_tagged_hits: int = Field(1000, ge=1)
    expected_t0_ns: float = 0.0
    expected_v_drift_um_per_ns: float = Field(53.8, gt=0)
    t0_warning_ns: float = Field(10.0, gt=0)
    t0_bad_ns: float = Field(25.0, gt=0)
    v_drift_warning_fraction: float = Field(0.05, gt=0)
    v_drift_bad_fraction: float = Field(0.12, gt=0)
    significance: float = Field(3.0, ge=0)


class ShapeConfig(_Section):
    """Shape vs reference: chi2/ndf of normalised histograms."""

    min_hits: int = Field(500, ge=1)
    warning_chi2_ndf: float = Field(3.0, gt=0)
    bad_chi2_ndf: float = Field(10.0, gt=0)


class ScintillatorConfig(_Section):
    """Scintillator presence check and automatic choice of the t0 channel."""

    min_orbits_with_hits: int = Field(50, ge=1)
    detect_min_orbits: int = Field(2, ge=1)
    detect_min_hits: int = Field(10, ge=1)
    detect_min_fraction: float = Field(0.6, gt=0, le=1)


class ChecksConfig(_Section):
    """Every threshold of the data-quality checks (one section per check)."""

    window: WindowConfig = WindowConfig()
    rate: RateConfig = RateConfig()
    dead_channels: DeadChannelsConfig = DeadChannelsConfig()
    noisy_channels: NoisyChannelsConfig = NoisyChannelsConfig()
    time_box: TimeBoxConfig = TimeBoxConfig()
    shape: ShapeConfig = ShapeConfig()
    scintillator: ScintillatorConfig = ScintillatorConfig()


class ChecksConfigError(ValueError):
    """A checks file that cannot be read or does not validate; the message is one line naming file and key."""


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_toml(text: str, name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ChecksConfigError(f"{name}: not valid TOML: {e}") from None


def _error_line(name: str, err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] in ("greater_than_equal", "greater_than", "less_than", "less_than_equal"):
        for words, sign in (("greater than or equal to", ">="), ("less than or equal to", "<="),
                            ("greater than", ">"), ("less than", "<")):
            msg = msg.replace(words, sign)
        msg = msg.replace("Input should be ", "must be ")
    elif first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = f", got {first['input']!r}" if first["type"] != "extra_forbidden" and not isinstance(first.get("input"), dict) else ""
    return f"{name}: {key}: {msg}{got}"


def default_checks_text() -> str:
    """The shipped ``dtmon/checks.toml``."""
    return resources.files("dtmon").joinpath(DEFAULT_CHECKS_FILE).read_text()


def load_checks_config(path: str | Path | None = None) -> ChecksConfig:
    """The shipped thresholds, with the TOML file ``path`` (if given) merged over them key by key.

    Raises:
        ChecksConfigError: the file is missing, is not TOML, or a value is out of range or
            unknown; the message names the file and the dotted key, e.g.
            ``checks.toml: time_box.min_tagged_hits: must be >= 1, got -5``.
    """
    data = _read_toml(default_checks_text(), DEFAULT_CHECKS_FILE)
    name = DEFAULT_CHECKS_FILE
    if path:
        p = Path(path)
        name = p.name
        try:
            text = p.read_text()
        except OSError as e:
            raise ChecksConfigError(f"{p}: cannot read checks file: {e.strerror}") from None
        data = _merge(data, _read_toml(text, name))
    try:
        return ChecksConfig.model_validate(data)
    except ValidationError as e:
        raise ChecksConfigError(_error_line(name, e)) from None

"""Labelled detector faults for the synthetic generator (``dtmon synth --dead-chamber ...``).

A ``SynthFaults`` travels in ``SynthParams.faults`` and so in the manifest of every file it
made; ``apply_faults`` changes one stretch of the generated hit stream (``dtmon.synth``'s
``_hit_stream`` dict of arrays) and draws no random numbers unless a noisy channel is asked
for, so fault-free output is unchanged. Faults, per chamber k (0-3) and local channel c (0-63):

* dead chamber k from ``dead_chamber_from_s`` s of detector time after the first file's start;
* dead channels (k, c): no hit at all;
* noisy channels (k, c, Hz): extra uncorrelated hits at that rate;
* t0 shift of chamber k (ns): its muon hits arrive later by that much;
* drift velocity of chamber k (um/ns): its drift times scale by v_nominal / v_k;
* missing scintillator: no t0 hit.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dtmon.hits import CELLS_PER_CHAMBER, N_CHAMBERS

KIND_NOISE = 3
KIND_SCINT = 2
KIND_MUON = 1


class SynthFaults(BaseModel):
    """Faults injected into synthetic data (all off by default)."""

    model_config = ConfigDict(frozen=True)

    dead_chamber: int | None = Field(None, ge=0, lt=N_CHAMBERS, description="chamber that stops giving hits")
    dead_chamber_from_s: float = Field(0.0, ge=0, description="detector time (s) after which it is dead")
    dead_channels: tuple[tuple[int, int], ...] = Field((), description="(chamber, local channel) with no hits")
    noisy_channels: tuple[tuple[int, int, float], ...] = Field((), description="(chamber, local channel, extra Hz)")
    t0_shift_ns: tuple[float, float, float, float] = Field((0.0, 0.0, 0.0, 0.0), description="per-chamber t0 shift, ns")
    drift_velocity_um_per_ns: tuple[float | None, float | None, float | None, float | None] = Field(
        (None, None, None, None), description="per-chamber drift velocity (None: the nominal one), um/ns"
    )
    missing_scintillator: bool = Field(False, description="no scintillator (t0) hits")

    @field_validator("dead_channels", "noisy_channels")
    @classmethod
    def _channels(cls, value):
        for item in value:
            if not (0 <= item[0] < N_CHAMBERS and 0 <= item[1] < CELLS_PER_CHAMBER):
                raise ValueError(f"{item}: chamber 0-3, local channel 0-63")
            if len(item) == 3 and item[2] <= 0:
                raise ValueError(f"{item}: the extra rate must be > 0 Hz")
        return value

    @field_validator("drift_velocity_um_per_ns")
    @classmethod
    def _velocity(cls, value):
        if any(v is not None and v <= 0 for v in value):
            raise ValueError("drift velocities must be > 0 um/ns")
        return value

    @property
    def active(self) -> bool:
        """True when any fault is set."""
        return self != SynthFaults()

    def describe(self) -> list[str]:
        """One short line per fault (for the CLI and docs)."""
        out = []
        if self.dead_chamber is not None:
            out.append(f"chamber {self.dead_chamber} dead from {self.dead_chamber_from_s:g} s")
        out += [f"chamber {k} channel {c} dead" for k, c in self.dead_channels]
        out += [f"chamber {k} channel {c} noisy (+{hz:g} Hz)" for k, c, hz in self.noisy_channels]
        out += [f"chamber {k} t0 shifted {s:+g} ns" for k, s in enumerate(self.t0_shift_ns) if s]
        out += [f"chamber {k} drift velocity {v:g} um/ns" for k, v in enumerate(self.drift_velocity_um_per_ns) if v]
        if self.missing_scintillator:
            out.append("no scintillator hits")
        return out


def _chamber_and_channel(fpga: np.ndarray, chan: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chamber (-1 outside chambers) and local channel of each hit, shapes (H,)."""
    inside = (fpga >= 0) & (fpga <= 1) & (chan >= 0) & (chan < 2 * CELLS_PER_CHAMBER)
    chamber = np.where(inside, 2 * fpga.astype(np.int64) + (chan >= CELLS_PER_CHAMBER), -1)
    return chamber, chan.astype(np.int64) % CELLS_PER_CHAMBER


def apply_faults(stream: dict, faults: SynthFaults, rng: np.random.Generator, t_start_ns: float, duration_ns: float,
                 t_origin_ns: float, nominal_v_drift_um_per_ns: float) -> dict:
    """``stream`` (arrays (H,) t [ns], fpga, chan, kind, drift, muon, chamber, layer; ``n_muons``) with ``faults``.

    Args:
        t_start_ns, duration_ns: the stretch the stream covers (for noisy-channel hits).
        t_origin_ns: detector time of this file's t = 0 after the first file's start (ns),
            for ``dead_chamber_from_s``.
        nominal_v_drift_um_per_ns: the drift velocity the stream was made with.
    Returns:
        a new dict (the input when no fault is set).
    """
    if not faults.active:
        return stream
    s = {k: v for k, v in stream.items() if k != "n_muons"}
    t = s["t"].copy()
    muon = s["kind"] == KIND_MUON
    for k in range(N_CHAMBERS):
        own = muon & (s["chamber"] == k)
        v = faults.drift_velocity_um_per_ns[k]
        if v:
            extra = s["drift"][own] * (nominal_v_drift_um_per_ns / v - 1.0)
            t[own] += extra
            s["drift"] = s["drift"].copy()
            s["drift"][own] += extra
        t[own] += faults.t0_shift_ns[k]
    s["t"] = t
    if faults.noisy_channels:
        counts = rng.poisson([hz * duration_ns * 1e-9 for _, _, hz in faults.noisy_channels])
        k = np.repeat([c[0] for c in faults.noisy_channels], counts)
        c = np.repeat([c[1] for c in faults.noisy_channels], counts)
        n = int(counts.sum())
        add = {"t": t_start_ns + rng.random(n) * duration_ns, "fpga": (k // 2).astype(s["fpga"].dtype),
               "chan": (c + CELLS_PER_CHAMBER * (k % 2)).astype(s["chan"].dtype),
               "kind": np.full(n, KIND_NOISE, s["kind"].dtype), "drift": np.full(n, np.nan),
               "muon": np.full(n, -1, s["muon"].dtype), "chamber": np.full(n, -1, s["chamber"].dtype),
               "layer": np.full(n, -1, s["layer"].dtype)}
        s = {key: np.concatenate([s[key], add[key]]) for key in s}
    chamber, local = _chamber_and_channel(s["fpga"], s["chan"])
    keep = np.ones(len(s["t"]), bool)
    if faults.missing_scintillator:
        keep &= s["kind"] != KIND_SCINT
    for k, c in faults.dead_channels:
        keep &= ~((chamber == k) & (local == c))
    if faults.dead_chamber is not None:
        keep &= ~((chamber == faults.dead_chamber) & (s["t"] + t_origin_ns >= faults.dead_chamber_from_s * 1e9))
    out = {key: v[keep] for key, v in s.items()}
    out["n_muons"] = stream["n_muons"]
    return out


def _fields(text: str, n_min: int, n_max: int, option: str) -> list[str]:
    parts = text.split(":")
    if not n_min <= len(parts) <= n_max:
        raise ValueError(f"--{option} {text!r}: expected {'CHAMBER:VALUE' if n_max == 2 else 'CHAMBER:CHANNEL[:HZ]'}")
    return parts


def faults_from_options(dead_chamber: int | None, dead_from_s: float, dead_channels: list[str] | None,
                        noisy_channels: list[str] | None, t0_shifts: list[str] | None, drift_velocities: list[str] | None,
                        no_scintillator: bool, default_noisy_hz: float = 200.0) -> SynthFaults:
    """``SynthFaults`` from the ``dtmon synth`` options (``K:C``, ``K:C[:HZ]``, ``K:NS``, ``K:UM_PER_NS`` strings).

    Raises:
        ValueError: a malformed option or a value out of range (one line naming the option).
    """
    try:
        dead = tuple((int(k), int(c)) for k, c in (_fields(x, 2, 2, "dead-channel") for x in dead_channels or []))
        noisy = tuple(
            (int(f[0]), int(f[1]), float(f[2]) if len(f) == 3 else default_noisy_hz)
            for f in (_fields(x, 2, 3, "noisy-channel") for x in noisy_channels or [])
        )
        shift = [0.0] * N_CHAMBERS
        for k, ns in (_fields(x, 2, 2, "t0-shift") for x in t0_shifts or []):
            shift[int(k)] = float(ns)
        velocity: list[float | None] = [None] * N_CHAMBERS
        for k, v in (_fields(x, 2, 2, "drift-velocity") for x in drift_velocities or []):
            velocity[int(k)] = float(v)
        return SynthFaults(dead_chamber=dead_chamber, dead_chamber_from_s=dead_from_s, dead_channels=dead,
                           noisy_channels=noisy, t0_shift_ns=tuple(shift), drift_velocity_um_per_ns=tuple(velocity),
                           missing_scintillator=no_scintillator)
    except IndexError as e:
        raise ValueError(f"chamber out of range 0-3 ({e})") from None
    except Exception as e:  # pydantic ValidationError, int()/float() errors
        if isinstance(e, ValueError) and str(e).startswith("--"):
            raise
        first = getattr(e, "errors", lambda: [{"msg": str(e)}])()[0]["msg"]
        raise ValueError(f"bad fault option: {first}") from None

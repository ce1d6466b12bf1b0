"""Driver-side data quality: the check window, the checks' state and the t0 channel, per micro-batch.

``QualityMonitor.update`` takes one micro-batch's aggregates (``processor.reduce.BatchAggregates``)
after Spark has reduced it and returns what the results message carries: the quality report
of the window (``dtmon.schema.QualityReport``), the scintillator channel and how it was chosen,
the batch's stream events and the dead/noisy channels in the version-2 ``ChannelHealth`` form.
Works on a few kB per batch; the checks themselves are the pure functions of ``processor.checks``.
State lives in memory: a restarted processor starts with an empty window.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dtmon.checks_config import ChecksConfig, load_checks_config
from dtmon.hits import N_CHAMBERS
from dtmon.reference import Reference, load_reference
from dtmon.schema import ChannelHealth, ChannelRef, QualityReport, QualityWindow, Scintillator, StreamEvent
from dtmon.settings import Settings
from dtmon.wire import RunEvent
from processor import checks
from dtmon.hits import SCINT_CHANNEL as DEFAULT_SCINT_CHANNEL
from processor.scint import N_CANDIDATES, STATS, choose_scintillator
from processor.window import CheckWindow, WindowBatch, WindowTotals

log = logging.getLogger("dtmon.processor")


class ScintillatorChoice:
    """The t0 channel: the configured one, else the one ``processor.scint.choose_scintillator`` finds
    in the candidate counts summed over batches (kept once found), else the PDF default 128."""

    def __init__(self, fpga: int, channel: int | None, config: ChecksConfig):
        self.fpga = fpga
        self.config = config.scintillator
        self._stats = np.zeros((N_CANDIDATES, len(STATS)), np.int64)
        if channel is not None:
            self.channel, self.source = channel, "configured"
            self.reason = f"FPGA {fpga} channel {channel} set by the scint_channel setting"
        else:
            self.channel, self.source = DEFAULT_SCINT_CHANNEL, "default"
            self.reason = f"course PDF default FPGA {fpga} channel {DEFAULT_SCINT_CHANNEL} until a t0 channel is found"

    def observe(self, candidates: np.ndarray) -> bool:
        """Add one batch's ``candidate_stats``; True when this changed the channel."""
        if self.source != "default":
            return False
        self._stats += np.asarray(candidates, np.int64).reshape(self._stats.shape)
        channel, reason = choose_scintillator(self._stats, self.config)
        if channel is None:
            self.reason = f"course PDF default FPGA {self.fpga} channel {DEFAULT_SCINT_CHANNEL}: {reason}"
            return False
        changed = channel != self.channel
        self.channel, self.source, self.reason = channel, "detected", f"detected {reason}"
        log.info("scintillator (t0) channel: %s", self.reason)
        return changed

    def model(self) -> Scintillator:
        """The ``Scintillator`` field of the results message."""
        return Scintillator(fpga=self.fpga, channel=self.channel, source=self.source, reason=self.reason)


@dataclass
class QualityUpdate:
    """What ``QualityMonitor.update`` adds to one results message."""

    quality: QualityReport
    scintillator: Scintillator
    channel_health: ChannelHealth
    events: list[StreamEvent] = field(default_factory=list)


class QualityMonitor:
    """Check window + checks' state (noisy-channel hysteresis, t0 channel, reference) across micro-batches.

    Args:
        settings: ``checks_file``, ``reference_file``, ``scint_fpga``/``scint_channel``.
        config: thresholds (default: ``load_checks_config(settings.checks_file)``).
    Raises:
        dtmon.checks_config.ChecksConfigError: a bad checks file.
        dtmon.reference.ReferenceError: a bad reference file.
    """

    def __init__(self, settings: Settings, config: ChecksConfig | None = None):
        self.settings = settings
        self.config = config or load_checks_config(settings.checks_file)
        self.window = CheckWindow(self.config.window)
        self.scintillator = ScintillatorChoice(settings.scint_fpga, settings.scint_channel, self.config)
        self.noisy: list[set[int]] = [set() for _ in range(N_CHAMBERS)]
        self.reference: Reference | None = None
        self._reference_mtime: float | None = None
        self.reload_reference()

    def reload_reference(self) -> None:
        """Load ``settings.reference_file`` when it is new or changed on disk (a missing file: no reference).

        Raises:
            dtmon.reference.ReferenceError: on the first load only; later a bad file is logged
                and the previous reference kept.
        """
        path = self.settings.reference_file
        if not path:
            return
        try:
            mtime = Path(path).stat().st_mtime
        except OSError:
            if self.reference is None and self._reference_mtime is None:
                log.warning("reference file %s not found: shapes are not compared", path)
                self._reference_mtime = -1.0
            return
        if mtime == self._reference_mtime:
            return
        first = self._reference_mtime is None
        self._reference_mtime = mtime
        try:
            self.reference = load_reference(path)
            log.info("reference loaded: %s (%s)", self.reference.name, path)
        except ValueError as e:
            if first:
                raise
            log.error("reference file not reloaded: %s", e)

    def binning_settings(self) -> Settings:
        """``settings`` with the current t0 channel, for ``aggregate_batch``."""
        if self.settings.scint_channel == self.scintillator.channel:
            return self.settings
        return self.settings.model_copy(update={"scint_channel": self.scintillator.channel})

    def update(self, batch_id: int, agg, now: float | None = None) -> QualityUpdate:
        """Add one micro-batch (``BatchAggregates``) to the window and judge the window.

        A run-start marker (``reset_on_run_start``) or an ORBIT_CNT jump (``reset_on_orbit_jump``:
        a counter reset, or a looping producer replaying its sample) in the batch empties the
        window first, so replayed orbits are not added up as new statistics; a
        new t0 channel empties it and leaves this batch out (its E1/E2 used the old channel).
        """
        now = time.time() if now is None else now
        self.reload_reference()
        window = self.config.window
        if (window.reset_on_run_start and any(e[1] == RunEvent.START for e in agg.run_events)) or (
            window.reset_on_orbit_jump and agg.orbit_jumps > 0
        ):
            self.window.reset()
        if self.scintillator.observe(agg.scint_candidates):
            self.window.reset()  # this batch's E1/E2 used the old channel: the window restarts with the next one
        elif agg.rows_read:
            self.window.add(WindowBatch.from_aggregates(agg))
        totals = self.window.totals(tuple(agg.drift_edges))
        report = self.judge(totals)
        dead = [ChannelRef(chamber=c.chamber, channel=k) for c in report.chambers for k in c.dead_channels]
        noisy = [ChannelRef(chamber=c.chamber, channel=k) for c in report.chambers for k in c.noisy_channels]
        health = ChannelHealth(window_batches=self.config.window.batches, noisy_factor=self.config.noisy_channels.factor_on,
                               dead=dead, noisy=noisy)
        events = checks.orbit_jump_events(batch_id, agg.orbit_jumps, agg.orbit_min, agg.orbit_max, now)
        return QualityUpdate(report, self.scintillator.model(), health, events)

    def judge(self, totals: WindowTotals) -> QualityReport:
        """Every check over the window's totals -> the quality report (updates the noisy-channel state)."""
        cfg, ref = self.config, self.reference
        ref_occ = ref.occupancy() if ref else None
        ref_drift = ref.drift_time() if ref and tuple(ref.drift_edges) == tuple(totals.drift_edges) else None
        chambers, fits = [], []
        for c in range(N_CHAMBERS):
            occ = totals.occupancy[c]
            results = [checks.rate_check(int(occ.sum()), totals.detector_time_s, cfg.rate,
                                         ref.chambers[c].rate_hz if ref else None)]
            dead_result, dead = checks.dead_channels_check(occ, cfg.dead_channels)
            noisy_result, noisy = checks.noisy_channels_check(occ, self.noisy[c], cfg.noisy_channels)
            self.noisy[c] = set(noisy)
            fit = checks.fit_time_box(totals.drift_time[c], totals.drift_edges, c)
            fits.append(fit)
            results += [dead_result, noisy_result, checks.time_box_check(fit, cfg.time_box),
                        checks.shape_check("occupancy_shape", occ, None if ref_occ is None else ref_occ[c], cfg.shape,
                                           ref.name if ref else None),
                        checks.shape_check("drift_time_shape", totals.drift_time[c],
                                           None if ref_drift is None else ref_drift[c], cfg.shape, ref.name if ref else None)]
            chambers.append(checks.chamber_quality(c, results, dead, noisy))
        detector = [checks.scintillator_check(totals.orbits_with_scintillator, totals.orbits_with_hits,
                                              (self.scintillator.fpga, self.scintillator.channel), cfg.scintillator)]
        window = QualityWindow(batches=totals.batches, hits=totals.hits, detector_time_s=round(totals.detector_time_s, 6))
        return checks.quality_report(chambers, detector, window, fits, ref.name if ref else None)

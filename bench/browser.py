"""A real Chromium page on the dashboard (Playwright), to time the first plotted batch."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dtmon.supervisor import process_parents

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

SHOWS_A_BATCH = """() => {
  if (!window.Bokeh || Bokeh.documents.length === 0) return false;
  const status = Bokeh.documents[0].get_model_by_name("status");
  return status !== null && status.text.includes("last batch <b>");
}"""
"""True once the dashboard's status line names a batch, i.e. a results message was plotted."""


def playwright_driver_pid() -> int | None:
    """Pid of the Playwright driver child of this process (Chromium runs below it), or None."""
    me = os.getpid()
    for pid, parent in process_parents().items():
        try:
            if parent == me and b"run-driver" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


class Browser:
    """Headless Debian Chromium showing ``url``; ``close()`` ends it.

    Raises (constructor): ImportError without Playwright, playwright errors when
    Chromium cannot start or the page does not load within ``timeout_s``.
    """

    def __init__(self, url: str, timeout_s: float = 60.0):
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        try:
            self._browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            self.page = self._browser.new_page(viewport={"width": 1260, "height": 900})
            self.page.goto(url, timeout=timeout_s * 1000)
        except Exception:
            self._pw.stop()
            raise

    def wait_plotted(self, timeout_s: float) -> float | None:
        """Monotonic time at which the page first showed a batch, or None after ``timeout_s``."""
        try:
            self.page.wait_for_function(SHOWS_A_BATCH, timeout=timeout_s * 1000, polling=100)
        except Exception:  # noqa: BLE001 - playwright TimeoutError: reported as "not plotted"
            return None
        return time.monotonic()

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._pw.stop()

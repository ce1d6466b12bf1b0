"""Screenshot of a LIVE dashboard (``dtmon up``) at 1280x720 in Chromium, once the stream is steady.

Usage: ``python -m tests.dashboard.shoot_live URL OUT.png [BATCHES]`` — waits until the page has
plotted BATCHES micro-batches (default 30) with no stale banner and every chamber tile judged
(not grey), then shoots the Overview. README's live pictures are made this way.
"""

from __future__ import annotations

import sys

from playwright.sync_api import sync_playwright

from tests.dashboard.live import CHROMIUM, CHROMIUM_ARGS
from tests.test_stack import SERIES_ROWS_JS


def shoot(url: str, out: str, batches: int = 30, timeout_s: float = 600.0) -> list[tuple[str, str]]:
    """Shoot ``url`` into ``out``; returns the tiles' (key, quality) as shown."""
    steady = (f"() => ({SERIES_ROWS_JS})() >= {batches} && !Bokeh.documents[0].get_model_by_name('stale').visible"
              " && !Bokeh.documents[0].get_model_by_name('summary').text.includes(\"data-quality='null'\")")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(url)
            page.wait_for_function(steady, timeout=timeout_s * 1000)
            page.wait_for_timeout(1500)  # let the plots paint
            page.screenshot(path=out)
            tiles = page.locator("[data-tile]")
            return [(tiles.nth(i).get_attribute("data-tile"), tiles.nth(i).get_attribute("data-quality"))
                    for i in range(tiles.count())]
        finally:
            browser.close()


if __name__ == "__main__":
    print(shoot(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 30))

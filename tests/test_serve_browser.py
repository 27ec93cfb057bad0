"""The draw-a-digit page end to end: headless Chromium (Debian's) driven by Playwright, real mouse strokes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from lit_mnist.serve import running

pytestmark = pytest.mark.slow  # a server and a browser

CHROMIUM = Path("/usr/bin/chromium")
playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

#: As root Chromium needs --no-sandbox; the rest stop it calling outside hosts on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

Stroke = list[tuple[float, float]]
#: Hand-made digits as strokes in the 280 × 280 drawing pad's pixels.
DIGITS: dict[int, list[Stroke]] = {
    1: [[(140, 40 + 10 * i) for i in range(21)]],
    0: [
        [
            (140 + 60 * math.sin(t / 24 * 2 * math.pi), 140 - 95 * math.cos(t / 24 * 2 * math.pi))
            for t in range(25)
        ]
    ],
    7: [[(75 + 13 * i, 55) for i in range(11)] + [(205 - 7 * i, 55 + 18 * i) for i in range(1, 11)]],
}


@pytest.fixture(scope="module")
def page_url(mnist_mlp_checkpoint: Path) -> Any:
    with running(mnist_mlp_checkpoint) as url:
        yield url


def draw(page: Any, strokes: list[Stroke]) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
        page.mouse.up()


def test_drawn_digits_are_recognised_on_the_page(page_url: str, tmp_path: Path) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 480})
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(page_url) else None)
            page.goto(f"{page_url}/")
            for digit, strokes in DIGITS.items():
                page.click("#clear")
                assert page.text_content("#label") == ""
                draw(page, strokes)
                page.wait_for_selector('#label[data-done="1"]', timeout=20_000)
                shown = page.text_content("#label")
                page.screenshot(path=str(tmp_path / f"digit-{digit}.png"))
                assert shown == str(digit), f"drew {digit}, the page shows {shown}"
                # ten bars, the drawn digit's the longest, and the model's input drawn in
                values = [float(page.text_content(f'[data-digit="{d}"]').rstrip("%")) for d in range(10)]
                assert abs(sum(values) - 100) < 1 and max(range(10), key=values.__getitem__) == digit
                ink = page.evaluate(
                    "() => document.getElementById('input').getContext('2d')"
                    ".getImageData(0, 0, 28, 28).data.filter((v, i) => i % 4 == 0 && v > 0).length"
                )
                assert ink > 20
            page.click("#clear")
            assert page.text_content("#label") == ""
            assert not outside, outside
        finally:
            browser.close()
    assert (tmp_path / "digit-0.png").stat().st_size > 1000

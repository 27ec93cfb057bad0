"""The draw-a-digit page end to end: headless Chromium (Debian's) driven by Playwright, real mouse strokes.

``LIT_MNIST_SCREENSHOT=docs/serve.png`` also saves the README's screenshot there (two models side by
side, with their heat maps); without it the test writes nothing outside its temporary folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import CHROMIUM, CHROMIUM_ARGS, REPO, Stroke, draw, running

pytestmark = pytest.mark.slow  # a server and a browser

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium)", allow_module_level=True)

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


#: The served models, in order (named after their run folders).
NAMES = ["mlp", "cnn"]


@pytest.fixture(scope="module")
def page_url(mnist_mlp_checkpoint: Path, mnist_cnn_checkpoint: Path) -> Any:
    with running("--ckpt_path", f"[{mnist_mlp_checkpoint}, {mnist_cnn_checkpoint}]") as server:
        yield server.url


def canvas_pixels(page: Any, selector: str) -> list[list[int]]:
    """The 28 × 28 canvas's pixels as [r, g, b] rows."""
    data = page.evaluate(
        f"() => Array.from(document.querySelector({json.dumps(selector)}).getContext('2d')"
        ".getImageData(0, 0, 28, 28).data)"
    )
    return [[data[4 * (28 * r + c) : 4 * (28 * r + c) + 3] for c in range(28)] for r in range(28)]


def api_answer(url: str, pixels: list[list[int]]) -> dict:
    body = json.dumps({"pixels": pixels}).encode()
    request = urllib.request.Request(f"{url}/predict", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_every_models_answer_to_a_drawn_digit_is_on_the_page(page_url: str, tmp_path: Path) -> None:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1240, "height": 500})
            outside = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(page_url) else None)
            page.goto(f"{page_url}/")
            for digit, strokes in DIGITS.items():
                page.click("#clear")
                assert all(label == "" for label in page.locator(".label").all_text_contents())
                draw(page, strokes)
                page.wait_for_selector('#answers[data-done="1"]', timeout=20_000)
                page.screenshot(path=str(tmp_path / f"digit-{digit}.png"))
                # the image the models received, read back from the page, and the API's answer for it
                seen = [[rgb[0] for rgb in row] for row in canvas_pixels(page, "#input")]
                assert sum(v > 0 for row in seen for v in row) > 20
                expected = {m["name"]: m for m in api_answer(page_url, seen)["models"]}
                assert list(expected) == NAMES
                for name in NAMES:
                    card = f'[data-model="{name}"]'
                    shown = page.text_content(f"{card} .label")
                    values = [
                        float(page.text_content(f'{card} [data-digit="{d}"]').rstrip("%")) for d in range(10)
                    ]
                    assert shown == str(expected[name]["label"]), (name, digit)
                    assert all(
                        abs(v - 100 * p) <= 0.051
                        for v, p in zip(values, expected[name]["probs"], strict=True)
                    )
                    assert shown == str(digit), f"drew {digit}, {name} says {shown}"
                assert not page.is_visible(f'[data-model="{NAMES[0]}"] canvas')  # heat maps only when asked
            # one click: each model's heat map of the last drawing, in colour over the grey input
            page.click("#explain")
            page.wait_for_selector('#answers[data-done="1"]', timeout=20_000)
            for name in NAMES:
                heat = canvas_pixels(page, f'[data-model="{name}"] canvas')
                assert page.is_visible(f'[data-model="{name}"] canvas')
                assert sum(rgb[0] != rgb[1] for row in heat for rgb in row) > 20, name
            shot = tmp_path / "serve.png"
            page.screenshot(path=str(shot))
            if os.environ.get("LIT_MNIST_SCREENSHOT"):
                shutil.copyfile(shot, REPO / os.environ["LIT_MNIST_SCREENSHOT"])
            page.click("#clear")
            assert all(page.text_content(f'[data-model="{n}"] .label') == "" for n in NAMES)
            assert not outside, outside
        finally:
            browser.close()
    assert (tmp_path / "digit-0.png").stat().st_size > 1000

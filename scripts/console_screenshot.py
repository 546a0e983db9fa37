#!/usr/bin/env python
"""The README's picture of the console (docs/console.png): a fresh `xkslab up` on free ports in a
temporary data directory, Debian's Chromium driven by Playwright, signed in as the lab's administrator,
"Run the demo" pressed on the flow page; the page is saved once both calls' audit rows are shown.

    python scripts/console_screenshot.py [--out docs/console.png] [--width 1280]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from xkslab.lab.process import lab_process

WAIT_MS = 120_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "console.png"
    )
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, lab_process(Path(tmp) / "data") as lab:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium)
            page = browser.new_page(viewport={"width": args.width, "height": 800})
            page.set_default_timeout(WAIT_MS)
            page.goto(lab.data["console"]["url"])
            page.fill("#email", lab.data["dsm"]["admin_email"])
            page.fill("#password", lab.data["dsm"]["admin_password"])
            page.keyboard.press("Enter")
            page.click("nav >> text=The flow")
            page.click("#run-demo")
            page.wait_for_selector("figure.flow[data-operation=Decrypt] caption")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(args.out), clip=_clip(page), full_page=True)
            browser.close()
    print(args.out)


def _clip(page: object) -> dict[str, float]:
    """From the top of the page to the end of the two flow diagrams (the recent requests below are cut);
    page coordinates, the page being scrolled to its top."""
    box = page.locator("#flow-output").bounding_box()  # type: ignore[attr-defined]
    width = page.viewport_size["width"]  # type: ignore[attr-defined]
    return {"x": 0, "y": 0, "width": width, "height": box["y"] + box["height"] + 16}


if __name__ == "__main__":
    main()

"""`make screenshots`: the pictures in the README and docs/OPERATIONS.md, taken from `make demo`.

Starts the demo (the simulator's workspace, its spike a few seconds in), waits for its third
poll, and saves the overview, a budget member's page and an anomaly rule's page at 1280 px,
and the overview at phone width, into docs/screenshots/. Needs Debian's chromium and
chromium-driver, as the browser test does.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.web.test_browser import CHROMIUM_FLAGS

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "docs" / "screenshots"
PAGES = (
    ("status-page.png", "/", 1280, False),
    ("budget-member.png", "/rules/per-key-daily/key_a5e870", 1280, False),
    ("anomaly-rule.png", "/rules/model-spend-spike", 1280, False),
    ("status-page-phone.png", "/", 390, True),
)


def capture(driver: WebDriver, url: str, width: int, mobile: bool) -> bytes:
    metrics = {"width": width, "height": 100, "deviceScaleFactor": 1, "mobile": mobile}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    driver.get(url)
    metrics["height"] = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png"})
    return base64.b64decode(shot["data"])


def main() -> int:
    demo = subprocess.Popen(
        [sys.executable, "-m", "daemon.cli", "demo", "--interval", "10s", "--spike-after", "5s"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert demo.stdout is not None
    page = None
    try:
        for line in demo.stdout:
            if found := re.search(r"status page at (http://\S+)/ ", line):
                page = found.group(1)
            if line.startswith("--- poll 3 ---"):
                break
        if page is None:
            print("screenshots: the demo printed no page URL", file=sys.stderr)
            return 1
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        with tempfile.TemporaryDirectory() as profile:
            options.add_argument(f"--user-data-dir={profile}")
            driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
            try:
                TARGET.mkdir(parents=True, exist_ok=True)
                for name, path, width, mobile in PAGES:
                    (TARGET / name).write_bytes(capture(driver, page + path, width, mobile))
                    print(f"wrote docs/screenshots/{name}")
            finally:
                driver.quit()
    finally:
        demo.terminate()
        demo.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

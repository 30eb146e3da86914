"""Take the screenshots of ``flowtel serve``'s pages that docs/serve.md shows.

Run: ``eval "$(bash .ci/browser.sh)" && python docs/screenshots.py [--out docs/images]``. It
records a demo history (``flowtel demo --runs 40``) into a temporary SQLite file, serves it with
``flowtel serve`` on a free loopback port, and saves the runs list (``serve-runs.png``), the
first failed run (``serve-run.png``) and the stats page (``serve-stats.png``) as seen by
headless Chromium 1280 pixels wide, a laptop window (``FLOWTEL_CHROMEDRIVER``,
``FLOWTEL_CHROMIUM``).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

ROOT = Path(__file__).resolve().parent.parent


def flowtel(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporters.cli", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/flowtel.db"
        subprocess.run(flowtel("demo", "--runs", str(args.runs), "--db", url), check=True,
                       env=env, cwd=tmp, stdout=subprocess.DEVNULL)  # fmt: skip
        port = free_port()
        server = subprocess.Popen(flowtel("serve", "--db", url, "--port", str(port)), env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(base + "/api/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            options = webdriver.ChromeOptions()
            if os.environ.get("FLOWTEL_CHROMIUM"):
                options.binary_location = os.environ["FLOWTEL_CHROMIUM"]
            for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                             "--window-size=1280,900", "--hide-scrollbars"):  # fmt: skip
                options.add_argument(argument)
            driver_path = os.environ.get("FLOWTEL_CHROMEDRIVER", "/usr/bin/chromedriver")
            service = Service(executable_path=driver_path)
            driver = webdriver.Chrome(service=service, options=options)
            try:
                args.out.mkdir(parents=True, exist_ok=True)
                driver.get(base + "/")
                driver.save_screenshot(str(args.out / "serve-runs.png"))
                driver.get(base + "/?status=failed")
                driver.find_element(By.CSS_SELECTOR, "tr.run.status-failed td a").click()
                time.sleep(0.5)
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(max(900, int(height) + 40), 2400))
                driver.save_screenshot(str(args.out / "serve-run.png"))
                driver.set_window_size(1280, 900)
                driver.get(base + "/stats")
                height = driver.execute_script("return document.body.scrollHeight")
                driver.set_window_size(1280, min(max(900, int(height) + 40), 2400))
                driver.save_screenshot(str(args.out / "serve-stats.png"))
            finally:
                driver.quit()
        finally:
            server.terminate()
            server.wait(10)
    for name in ("serve-runs.png", "serve-run.png", "serve-stats.png"):
        print(args.out / name)


if __name__ == "__main__":
    main()

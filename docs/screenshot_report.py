"""Render a neuroenc HTML report to a PNG with headless Chromium, to look at it as a reader would.

    python docs/screenshot_report.py results/demo/latest            # writes the report first
    python docs/screenshot_report.py report.html --out shot.png --height 4000

Needs Debian's chromium (`apt-get install chromium`). The flags keep Chromium off the
network (the report is self-contained: every image is embedded).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def screenshot(html: Path, out: Path, width: int = 1280, height: int = 3000) -> Path:
    """Return ``out`` after Chromium rendered ``html`` into it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: install it (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out.resolve()}", html.resolve().as_uri()]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not out.is_file() or out.stat().st_size == 0:
        raise SystemExit(f"chromium wrote no screenshot to {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", type=Path, help="a run folder (its report is written) or an .html file")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    html = args.target
    if html.is_dir():
        from neuroenc.viz.report import write_report

        html = write_report(html)
    out = args.out or html.with_suffix(".png")
    print(screenshot(html, out, args.width, args.height))


if __name__ == "__main__":
    sys.exit(main())

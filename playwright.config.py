"""Browser launch settings for the tests, in one place: Debian's Chromium, never a downloaded browser.

Playwright for Python launches the real binary of Debian's ``chromium`` package (``/usr/bin/chromium``
is a shell wrapper that adds flags of its own), found with ``dpkg -L chromium``; ``AI4ALL_CHROMIUM``
names another binary and wins when set. ``playwright install`` is never needed and must not be run:
it downloads a browser, which this project does not use (and which fails offline).

The file name is fixed by the project layout, so it is not importable as ``playwright.config`` (that
is Playwright's package); ``tests/support/browser.py`` loads it by path. Stdlib only.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM_ENV = "AI4ALL_CHROMIUM"
DEBIAN_PACKAGE = "chromium"

# Playwright adds --headless (Chromium's new headless mode) and --no-sandbox itself; --no-sandbox is
# repeated here because root in a container cannot use the sandbox, whoever launches.
CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)

# SwiftShader on the CPU, even with --disable-gpu: correct, and about 100x slower than WASM.
WEBGPU_ARGS: tuple[str, ...] = ("--enable-unsafe-webgpu",)

# Chromium keeps only the last --disable-features switch, and Playwright passes its own list first, so
# ours must carry Playwright's too (those of playwright 1.65's chromiumSwitches that apply on Linux).
PLAYWRIGHT_DISABLED_FEATURES: tuple[str, ...] = (
    "AvoidUnnecessaryBeforeUnloadCheckSync",
    "DestroyProfileOnBrowserClose",
    "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable",
    "LensOverlay",
    "MediaRouter",
    "PaintHolding",
    "ThirdPartyStoragePartitioning",
    "AvoidCorsURLLoaderRestartOnRedirect",
    "OptimizationHints",
    "NetworkTimeServiceQuerying",
    "AimEnabled",
    "PreconnectToSearch",
)
# Host ICE candidates with real addresses, not mDNS names: WebRTC connects in ~0.2 s instead of ~1.2 s.
AI4ALL_DISABLED_FEATURES: tuple[str, ...] = ("WebRtcHideLocalIpsWithMdns",)


class ChromiumNotFoundError(RuntimeError):
    """No Chromium binary to launch: install Debian's package or point AI4ALL_CHROMIUM at one."""


def _is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == b"\x7fELF"
    except OSError:
        return False


def _from_dpkg() -> Path | None:
    """The executable ELF file named ``chromium`` that Debian's package installs, if any."""
    try:
        listing = subprocess.run(
            ["dpkg", "-L", DEBIAN_PACKAGE], capture_output=True, text=True, check=False, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        path = Path(line.strip())
        if path.name == "chromium" and os.access(path, os.X_OK) and path.is_file() and _is_elf(path):
            return path
    return None


@functools.cache
def find_chromium() -> Path:
    """The Chromium binary Playwright must launch: ``$AI4ALL_CHROMIUM``, else Debian's real binary."""
    configured = os.environ.get(CHROMIUM_ENV)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ChromiumNotFoundError(f"{CHROMIUM_ENV}={configured} is not an executable file")
        return path
    found = _from_dpkg()
    if found is None:
        raise ChromiumNotFoundError(
            f"no Chromium binary: `apt-get install -y {DEBIAN_PACKAGE}` (Debian), or set {CHROMIUM_ENV} "
            "to a Chromium executable; do not run `playwright install`"
        )
    return found


def chromium_args(webgpu: bool = False) -> list[str]:
    """Command line switches for Chromium; ``webgpu`` adds a (SwiftShader) WebGPU adapter."""
    features = ",".join((*PLAYWRIGHT_DISABLED_FEATURES, *AI4ALL_DISABLED_FEATURES))
    return [*CHROMIUM_ARGS, *(WEBGPU_ARGS if webgpu else ()), f"--disable-features={features}"]


def browser_launch_options(webgpu: bool = False, *, headless: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``playwright.chromium.launch`` (and pytest-playwright's launch args)."""
    return {
        "executable_path": str(find_chromium()),
        "args": chromium_args(webgpu),
        "headless": headless,
        "chromium_sandbox": False,
    }

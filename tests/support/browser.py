"""A real browser for the web view's tests: Debian's headless `chromium` driven through its `chromedriver` with
Selenium, nothing downloaded (Selenium Manager is kept offline and never asked for a driver or a browser), a fresh
profile per browser, and no process left behind.

`open_browser(...)` is a context manager giving a `Browser`; `artefacts_dir()` is where a failing test's screenshot
and page source go (`Browser.save_artefacts`): $GRIDPILOT_ARTIFACTS, or build/test-artifacts/<run>/.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import psutil
import pytest

from support.paths import ROOT
from support.require import require_or_skip

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where a failing browser test leaves its screenshots and page sources (docs/testing.md); unset: under basetemp.
ARTIFACTS_ENV = "GRIDPILOT_ARTIFACTS"
#: Every wait on the page: generous, the machine runs other tests at load 20 (waits end as soon as the condition holds).
WAIT_S = 60.0
DESKTOP = (1280, 900)
PHONE = (390, 844)
#: Headless chromium's narrowest window (a --window-size below it is widened to it).
MIN_WINDOW_WIDTH = 500


def missing_reason() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (Debian package {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def require_browser() -> None:
    reason = missing_reason()
    if reason is not None:
        require_or_skip(reason)


#: This test run's directory under build/ (not pytest's basetemp: pytest keeps only the last three of those for the
#: user, and other runs on the machine rotate a failed run's artefacts away within minutes).
_RUN = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{os.getpid()}"


def artefacts_dir() -> Path:
    """$GRIDPILOT_ARTIFACTS, or build/test-artifacts/<run's UTC start>-<pid>/ in the repository (git ignores build/)."""
    named = os.environ.get(ARTIFACTS_ENV)
    base = Path(named) if named else ROOT / "build" / "test-artifacts" / _RUN
    base.mkdir(parents=True, exist_ok=True)
    return base


@dataclass
class Browser:
    """One headless chromium and its chromedriver; `driver` is Selenium's WebDriver."""

    driver: Any
    profile: Path
    javascript: bool
    #: Console messages read so far (get_log empties the browser's buffer, so they are kept here).
    console: List[Dict[str, Any]] = field(default_factory=list)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def wait(self, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
        """Wait until `condition(driver)` is truthy; on timeout fail saying `what` was awaited and where."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.2).until(condition)
        except TimeoutException:
            pass  # failed below, outside the handler, so the report does not chain Selenium's empty message
        pytest.fail(f"waited {timeout:.0f} s for {what}; the browser is at {self.driver.current_url}", pytrace=False)

    def element(self, css: str, timeout: float = WAIT_S) -> Any:
        """The first element matching `css`, once it is on the page."""
        from selenium.webdriver.common.by import By

        def found(d: Any) -> Any:
            hits = d.find_elements(By.CSS_SELECTOR, css)
            return hits[0] if hits else False

        return self.wait(found, f"an element {css!r}", timeout)

    def elements(self, css: str) -> List[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def wait_path(self, path_prefix: str, timeout: float = WAIT_S) -> str:
        """Wait until the browser's URL path starts with `path_prefix`; returns the URL."""
        from urllib.parse import urlsplit

        self.wait(lambda d: urlsplit(d.current_url).path.startswith(path_prefix), f"a page under {path_prefix}",
                  timeout)
        return str(self.driver.current_url)

    def console_messages(self) -> List[Dict[str, Any]]:
        """Every console message of the browser so far (chromium's 'browser' log: errors, CSP reports)."""
        self.console.extend(self.driver.get_log("browser"))
        return list(self.console)

    def csp_violations(self) -> List[str]:
        return [m["message"] for m in self.console_messages() if "Content Security Policy" in m.get("message", "")]

    def scroll_width(self) -> int:
        """document.documentElement.scrollWidth of the page shown: wider than the window means sideways scrolling
        (compare with the window's width, not window.innerWidth, which an emulated phone widens to the content)."""
        return int(self.driver.execute_script("return document.documentElement.scrollWidth;"))

    def wider_than(self, width: int) -> List[str]:
        """The outermost elements reaching past `width` px (tag#id.class and their right edge): why a page scrolls
        sideways, for a failure's message."""
        return list(self.driver.execute_script("""
            const out = [], w = arguments[0];
            const past = (el) => el.getBoundingClientRect().right > w + 0.5;
            // Inside a box that scrolls or clips sideways (.scroll), an element may be wider: the page is not.
            const contained = (el) => {
              for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
                if (['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(a).overflowX)) { return true; }
              }
              return false;
            };
            for (const el of document.body.querySelectorAll('*')) {
              if (past(el) && !contained(el)
                  && !(el.parentElement && el.parentElement !== document.body && past(el.parentElement))) {
                out.push(el.tagName.toLowerCase() + (el.id ? '#' + el.id : '')
                         + (el.className && el.className.baseVal === undefined && el.className
                            ? '.' + String(el.className).trim().split(/\\s+/).join('.') : '')
                         + ' to ' + Math.round(el.getBoundingClientRect().right) + ' px');
              }
            }
            return out.slice(0, 10);""", width))

    def save_artefacts(self, directory: Path, name: str) -> List[Path]:
        """A screenshot and the page source of what the browser shows now, as <name>.png and <name>.html."""
        directory.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:150]
        saved = []
        png, html = directory / f"{safe}.png", directory / f"{safe}.html"
        try:
            if self.driver.save_screenshot(str(png)):
                saved.append(png)
        except Exception as e:  # noqa: BLE001 - a broken browser must not hide the test's own failure
            (directory / f"{safe}.screenshot-error.txt").write_text(repr(e))
        try:
            html.write_text(f"<!-- {self.driver.current_url} -->\n{self.driver.page_source}")
            saved.append(html)
        except Exception as e:  # noqa: BLE001
            (directory / f"{safe}.source-error.txt").write_text(repr(e))
        return saved


def _options(profile: Path, size: Tuple[int, int], javascript: bool) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        # We run as root, and chromium refuses to start as root with its sandbox on.
        "--no-sandbox",
        # /dev/shm is small in containers and VMs; a full one crashes the renderer.
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        f"--window-size={max(size[0], MIN_WINDOW_WIDTH)},{size[1]}",
        # Nothing of the browser's own reaches the network: no updates, sync, metrics, field trials.
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--metrics-recording-only",
        "--disable-extensions",
        "--password-store=basic",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    if size[0] < MIN_WINDOW_WIDTH:
        # A narrower window is widened by chromium, so the phone's viewport is emulated, as devtools' device mode.
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": size[0], "height": size[1], "pixelRatio": 1.0, "touch": True, "mobile": True}})
    if not javascript:
        # The content setting, not a command-line flag: it is what a person switching JavaScript off gets.
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


def _children(pid: int) -> List[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _profile_processes(profile: Path) -> List[psutil.Process]:
    """Chromium processes naming this profile directory (its helpers, crashpad's handlers with their database in
    it, re-parented to init once chromedriver is gone)."""
    name = str(profile)
    found = []
    for p in psutil.process_iter():
        try:
            if any(name in arg for arg in p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


@contextmanager
def open_browser(size: Tuple[int, int] = DESKTOP, *, javascript: bool = True) -> Iterator[Browser]:
    """A headless chromium (fresh temporary profile, `size` window) under its own chromedriver; quit after, and
    every process it started gone (killed if it lingers, then the test fails: a leaked browser is a bug)."""
    require_browser()
    # Selenium Manager runs only when a driver or browser path is missing; both are given, and offline it would
    # refuse to download anything even if it ran.
    os.environ.setdefault("SE_OFFLINE", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = Path(tempfile.mkdtemp(prefix="gridpilot-chromium-"))
    service = Service(executable_path=str(CHROMEDRIVER), port=0, log_output=str(profile.with_suffix(".driver.log")))
    driver = None
    driver_pid: Optional[int] = None
    body_failed = True
    try:
        driver = webdriver.Chrome(service=service, options=_options(profile, size, javascript))
        driver_pid = service.process.pid if service.process else None
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield Browser(driver, profile, javascript)
        body_failed = False
    finally:
        started = _children(driver_pid) if driver_pid else []
        try:
            if driver is not None:
                driver.quit()
            else:
                service.stop()
        finally:
            left = _wait_gone(started, profile, 30.0)
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            shutil.rmtree(profile, ignore_errors=True)
            log = profile.with_suffix(".driver.log")
            log.unlink(missing_ok=True)
        # A test that failed already keeps its own message; the leftovers were killed either way.
        if left and not body_failed:
            pytest.fail(f"the browser left {len(left)} process(es) running after quit (killed now): "
                        + "; ".join(f"{p.pid}" for p in left), pytrace=False)


def _wait_gone(started: List[psutil.Process], profile: Path, timeout: float) -> List[psutil.Process]:
    deadline = time.monotonic() + timeout
    while True:
        alive = {p.pid: p for p in started if _alive(p)}
        alive.update({p.pid: p for p in _profile_processes(profile)})
        if not alive or time.monotonic() > deadline:
            return list(alive.values())
        time.sleep(0.2)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False

"""The chat page (/chat) in headless Chromium (Debian's chromium and chromium-driver, driven by
selenium): two pages on two nodes exchange messages and see each other in presence and typing;
a page whose connection drops resumes without a gap. A screenshot is kept under build/ (a CI
artifact, not committed)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from tests.node.helpers import HOST, in_process_cluster
from trimaran.node.config import Address

ROOT = Path(__file__).resolve().parent.parent.parent
WAIT_S = 20.0
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def require_chromium() -> None:
    """Skip on a developer's machine without Chromium; under CI (.ci/run installs it) fail instead."""
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.environ.get("CI"):
        pytest.fail("CI installs chromium and chromium-driver (.ci/run): the browser test must run")
    pytest.skip("needs Debian's chromium and chromium-driver")


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1000,700",
    ):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


async def until(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    """Poll ``check(driver)`` in a worker thread until it is truthy (bounded)."""
    with trio.move_on_after(WAIT_S):
        while True:
            value = await trio.to_thread.run_sync(check, driver)
            if value:
                return value
            await trio.sleep(0.1)
    source = await trio.to_thread.run_sync(lambda: driver.find_element("id", "status").text)
    raise AssertionError(f"{what} not seen within {WAIT_S} s (status: {source})")


def offsets(driver: Any) -> list[int]:
    return [int(x) for x in driver.execute_script("return [...document.querySelectorAll('#messages li')].map(li => li.dataset.offset)")]


def texts(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#messages li')].map(li => li.lastChild.textContent)")


def send(driver: Any, text: str) -> None:
    box = driver.find_element("id", "text")
    box.send_keys(text)
    driver.find_element("css selector", "#send button").click()


async def test_two_pages_chat_see_presence_and_typing_and_resume_after_a_drop(tmp_path: Path) -> None:
    require_chromium()
    async with in_process_cluster(tmp_path, 3, http_listen=Address(HOST, 0)) as cluster:
        await cluster.leader(timeout_s=WAIT_S)
        urls = [f"http://{cluster.nodes[i].http_address}/chat#channel=room&name={name}" for i, name in ((1, "ada"), (2, "bob"))]
        ada = await trio.to_thread.run_sync(browser)
        bob = await trio.to_thread.run_sync(browser)
        try:
            await trio.to_thread.run_sync(ada.get, urls[0])
            await trio.to_thread.run_sync(bob.get, urls[1])
            for driver in (ada, bob):
                await until(driver, lambda d: d.find_element("id", "status").text.startswith("connected"), "connected")
            # Each sees both in presence.
            for driver in (ada, bob):
                await until(driver, lambda d: sorted(li.text for li in d.find_elements("css selector", "#presence li")) == ["ada", "bob"], "presence")
            await trio.to_thread.run_sync(send, ada, "hello bob")
            await until(bob, lambda d: texts(d) == ["hello bob"], "ada's message on bob's page")
            # Typing (an ephemeral message: shown, never in history).
            await trio.to_thread.run_sync(lambda: bob.find_element("id", "text").send_keys("h"))
            await until(ada, lambda d: "bob typing" in d.find_element("id", "typing").text, "bob typing")
            await trio.to_thread.run_sync(lambda: bob.find_element("id", "text").clear())
            # Bob's connection drops; ada sends three more; bob resumes with all of them, once each.
            await trio.to_thread.run_sync(lambda: bob.execute_script("window.trimaranChat.ws.close()"))
            for n in (1, 2, 3):
                await trio.to_thread.run_sync(send, ada, f"more {n}")
            await until(bob, lambda d: texts(d) == ["hello bob", "more 1", "more 2", "more 3"], "the resumed messages")
            assert await trio.to_thread.run_sync(offsets, bob) == [1, 2, 3, 4]
            # Ada's own messages come back to her page from node 1, on its own time: wait for the last.
            await until(ada, lambda d: len(offsets(d)) >= 4, "ada's own last message on her page")
            assert await trio.to_thread.run_sync(offsets, ada) == [1, 2, 3, 4]
            build = ROOT / "build"
            build.mkdir(exist_ok=True)
            await trio.to_thread.run_sync(ada.save_screenshot, str(build / "chat-page.png"))
        finally:
            for driver in (ada, bob):
                await trio.to_thread.run_sync(driver.quit)

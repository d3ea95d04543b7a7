"""The dashboard (/) in headless Chromium against a real 3-node cluster with auth on: the members
table shows the three members and the leader ``status`` names, the charts get data points from the
live stream, nothing is blocked by the page's content security policy, and a killed node is marked
down within a few seconds. Screenshots are kept under build/ (not committed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from tests.node.helpers import HOST, RawClient, in_process_cluster
from tests.node.test_auth_edge import Signer
from tests.node.test_chat_page import ROOT, WAIT_S, browser, require_chromium, until
from tests.node.test_http_rest import call
from trimaran.node.config import Address

#: A member killed must be shown down within this long (views every second, a member asked for
#: at most a second).
DOWN_WITHIN_S = 5.0


def members(driver: Any) -> list[dict[str, str]]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#members tbody tr')].map(tr => ({node: tr.dataset.node, up: tr.dataset.up, role: tr.dataset.role}))"
    )


def chart_points(driver: Any, chart: str) -> int:
    """Points with a value above zero in a plotly chart's traces (0 before its first draw)."""
    return driver.execute_script(
        f"const d = document.getElementById('{chart}').data || [];"
        "return d.reduce((n, t) => n + (t.y || []).filter(v => v > 0).length, 0)"
    )


def drawn_width_px(driver: Any, chart: str) -> float:
    """The widest line drawn in a plotly chart's SVG, in pixels: what the chart shows, not only
    the data it was given (a chart given data it never redrew has none)."""
    return driver.execute_script(
        f"const lines = [...document.querySelectorAll('#{chart} .scatterlayer path.js-line')];"
        "return Math.max(0, ...lines.map(p => p.getBBox().width));"
    )


async def load(cluster: Any, leader: int, token: str, rounds: int) -> None:
    """KV writes over HTTP, a job and chat publishes: something for every chart."""
    http = cluster.nodes[leader].http_address
    for i in range(rounds):
        assert (await call(http, "PUT", f"/v1/kv/key{i}", b"x" * 64, token=token)).status == 200
        assert (await call(http, "POST", "/v1/chat/lobby", b"hi", token=token)).status == 200
        await trio.sleep(0.05)


async def test_dashboard_shows_members_leader_charts_and_a_node_going_down(tmp_path: Path) -> None:
    require_chromium()
    admin, viewer = Signer("admin-key"), Signer("viewer-key")
    async with in_process_cluster(
        tmp_path, 3, http_listen=Address(HOST, 0), auth_keys=(admin.trusted, viewer.trusted)
    ) as cluster:
        leader = await cluster.leader(timeout_s=WAIT_S)
        served = next(n for n in cluster.nodes if n != leader)
        doomed = next(n for n in cluster.nodes if n not in (leader, served))
        admin_token = admin.token(["admin:*"])
        client = await RawClient.connect(cluster.client_address(leader), token=admin_token)
        await client.register()
        for queue, n in (("mail", 3), ("video", 2)):
            for _ in range(n):
                body = client.command_body(["enqueue", queue, b"job"])
                body["service"] = "jobs"
                await client.call("command", body)
        await client.aclose()

        driver = await trio.to_thread.run_sync(browser)
        try:
            await trio.to_thread.run_sync(driver.set_window_size, 1400, 1250)
            url = f"http://{cluster.nodes[served].http_address}/#token={viewer.token(['cluster:read'])}"
            await trio.to_thread.run_sync(driver.get, url)
            await until(driver, lambda d: len(members(d)) == 3, "three members")
            # Load while the page watches, so the rate charts have points above zero.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(load, cluster, leader, admin_token, 40)
                await until(driver, lambda d: chart_points(d, "ops") >= 2, "ops/s points")
            await until(driver, lambda d: chart_points(d, "p99") >= 1, "p99 points")
            await until(driver, lambda d: drawn_width_px(d, "ops") >= 100, "an ops/s line drawn over time")
            await until(driver, lambda d: chart_points(d, "jobs") >= 2, "job queue bars")

            shown = await trio.to_thread.run_sync(members, driver)
            assert sorted(int(m["node"]) for m in shown) == sorted(cluster.nodes)
            assert all(m["up"] == "true" for m in shown)
            # The roles shown are the ones status gives, with exactly one leader.
            assert {int(m["node"]): m["role"] for m in shown} == {n: cluster.status(n)["role"] for n in cluster.nodes}
            assert [int(m["node"]) for m in shown if m["role"] == "leader"] == [leader]
            facts = await trio.to_thread.run_sync(
                lambda: driver.execute_script("return [document.getElementById('leader').textContent, document.getElementById('tolerance').textContent]")
            )
            assert facts[0] == str(leader) and facts[1].startswith("1 (3 voters")
            assert await trio.to_thread.run_sync(lambda: driver.execute_script("return window.trimaranDashboard.cspViolations")) == []
            build = ROOT / "build"
            build.mkdir(exist_ok=True)
            await trio.to_thread.run_sync(driver.save_screenshot, str(build / "dashboard.png"))

            # Kill a follower the page is not served by: it is marked down within a few seconds.
            cluster.crash(doomed)
            started = trio.current_time()

            def doomed_down(d: Any) -> bool:
                return any(m["node"] == str(doomed) and m["up"] == "false" for m in members(d))

            await until(driver, doomed_down, f"node {doomed} shown down")
            assert trio.current_time() - started < DOWN_WITHIN_S
            await until(driver, lambda d: d.execute_script("return document.getElementById('tolerance').textContent").startswith("0 "), "tolerance 0")
            await trio.to_thread.run_sync(driver.save_screenshot, str(build / "dashboard-node-down.png"))
        finally:
            await trio.to_thread.run_sync(driver.quit)

"""Under load from another process the simulator stays correct and fast (``-m slow``).

Run ``pytest tests/simulator/test_sim_load.py -m slow -s`` to see the throughput figures that
``docs/simulator.md`` reports.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from ailab_async.testing.simulator import Fixed, Simulator, SimulatorConfig, TaskBehaviour

LOADGEN = Path(__file__).with_name("loadgen.py")


async def drive(sim: Simulator, mix: str, requests: int = 2000, concurrency: int = 64) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(LOADGEN),
        sim.url,
        sim.api_key,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--mix",
        mix,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=300)
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    print(
        f"\n{mix}: {report['requests']} requests in {report['elapsed']:.2f} s "
        f"= {report['rps']:.0f} req/s; {report['statuses']}"
    )
    return report


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["mixed", "credits", "skin"])
async def test_2000_requests_at_concurrency_64_from_another_process(mix: str) -> None:
    config = SimulatorConfig(tasks=TaskBehaviour(duration=Fixed(0.0)))
    async with Simulator(config) as sim:
        report = await drive(sim, mix)
        stats = sim.stats
        assert report["bad_count"] == 0, report["bad"]
        assert report["unique_request_ids"] == 2000
        assert sum(report["statuses"].values()) == 2000
        assert stats.count() == 2000
        assert stats.count(outcome="OK") == 2000
        assert stats.in_flight == 0
        assert stats.max_concurrent <= 64
        billed = stats.count("smart-skin") + stats.count("smart-beauty")
        assert stats.credits_spent == billed
        assert sum(stats.submits_per_image.values()) == billed
        assert len(sim.state.tasks) == stats.count("smart-beauty")

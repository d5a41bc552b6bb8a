"""The agent's door seen from the agent: the directory holding its socket is the host's.

The agent may connect to the socket there, and nothing more: whatever it could plant
beside the socket, root on the host would act on when the mesh opens the door again
(after a gateway restart, the supervisor reopens the doors of the agents it adopts).
"""

from __future__ import annotations

import asyncio
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import pytest_asyncio

from tests.sandbox import probes
from tests.sandbox._stack import Sandbox, eventually, sandbox_stack
from tests.services import RedisProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

REFUSED = {"EROFS", "EACCES", "EPERM"}
RACE_S = 6.0
"""How long the agent races the mesh: some 25 reopenings of its door, a quarter second each."""


class DoorAgent(NamedTuple):
    sandbox: Sandbox
    user: str
    container: Any


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def agent(
    redis_server: RedisProcess, agent_image: str, docker_engine: Any
) -> AsyncIterator[DoorAgent]:
    async with sandbox_stack(redis_server.url, agent_image, docker_engine) as sandbox:
        user = await sandbox.stack.new_user()
        yield DoorAgent(sandbox, user, await sandbox.start_agent(user))


async def test_an_agent_cannot_create_replace_or_remove_anything_beside_its_socket(
    agent: DoorAgent,
) -> None:
    report = await probes.probe(agent.container, probes.DOOR_WRITES)
    allowed = {operation: failure for operation, failure in report.items() if failure is None}
    assert allowed == {}, f"in its door's directory on the host the agent could: {sorted(allowed)}"
    for operation, failure in report.items():
        assert failure in REFUSED, f"{operation}: {failure}"


async def test_reopening_a_door_never_touches_a_host_file_the_agent_links_to(
    agent: DoorAgent,
) -> None:
    """An agent swaps a symlink in for its socket each time the mesh binds it; the host file
    the link names must keep its mode, however often the door is reopened."""
    mesh = agent.sandbox.stack.mesh
    with tempfile.TemporaryDirectory(prefix="stk-host-") as host_dir:
        victim = Path(host_dir) / "host-secret"
        victim.write_text("root's alone\n")
        victim.chmod(0o600)
        racer = asyncio.create_task(
            probes.probe(agent.container, probes.DOOR_RACER, str(victim), str(RACE_S))
        )
        await asyncio.sleep(0.5)  # the racer is watching the door's directory
        reopened = chmodded = 0
        while not racer.done():
            await mesh.close(agent.user)

            async def reopened_by_supervisor() -> bool | None:
                return mesh.is_open(agent.user) or None

            await eventually(reopened_by_supervisor, 30, "the supervisor to reopen the door")
            reopened += 1
            await asyncio.sleep(0.1)
            if stat.S_IMODE(victim.stat().st_mode) != 0o600:
                chmodded += 1
                victim.chmod(0o600)
        report = await racer

    assert reopened >= 5
    assert chmodded == 0, (
        f"the mesh (root) made a host file the agent linked to world-writable in {chmodded} "
        f"of {reopened} reopenings (the agent swapped a symlink in for its socket "
        f"{report['swaps']} times)"
    )

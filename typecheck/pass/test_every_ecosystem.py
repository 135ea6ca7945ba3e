"""The same typed API on every ecosystem, and the Simulation's typed results."""

from __future__ import annotations

from typing_extensions import assert_type

from pachyderm_typed import World
from pachyderm_typed.ecosystems import InMemory, LocalDisk, Postgres, Simulation
from pachyderm_typed.simulation import Exploration, SimulatedWorld, WorldView
from typecheck.app import App, Counter, Increment, Ping, PingPong, Pong


def same_api(world: World[Counter | PingPong]) -> None:
    assert_type(world.send_sync(Counter.post("c", Increment())), int)
    assert_type(world.state(PingPong.address("a")), str | None)


def every_ecosystem() -> None:
    with LocalDisk(App, "app.db") as disk:
        assert_type(disk, LocalDisk[Counter | PingPong])
        assert_type(disk.send_sync(Counter.post("c", Increment())), int)
        same_api(disk)
    with Postgres(App, "postgresql://localhost/app", namespace="app") as pg:
        assert_type(pg, Postgres[Counter | PingPong])
        assert_type(pg.send_sync(PingPong.post("b", Pong())), str | None)
        same_api(pg)
    same_api(InMemory(App))

    sim = Simulation(App)
    assert_type(sim.send_sync(Counter.post("c", Increment())), int)
    run = sim.run([Counter.post("c", Increment()), PingPong.post("b", Ping(reply_to=PingPong.address("a")))])
    assert_type(run, SimulatedWorld[Counter | PingPong])
    assert_type(run.state(Counter.address("c")), int)
    assert_type(run.state(PingPong.address("a")), str | None)

    def at_most_one(view: WorldView[Counter | PingPong]) -> bool:
        return view.state(Counter.address("c")) <= 1

    exploration = sim.exhaust([Counter.post("c", Increment())], invariants={"at most one": at_most_one})
    assert_type(exploration, Exploration[Counter | PingPong])
    for outcome in exploration.outcomes:
        assert_type(outcome.state(Counter.address("c")), int)

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sentinela.adapters.store import Store
from sentinela_tools.local.stack import LocalStack


@pytest.fixture(scope="module")
def stack(tiny_card_path: Path) -> Iterator[LocalStack]:
    os.environ["SMS_BACKOFF_S"] = "0.01"
    s = LocalStack(card=tiny_card_path).start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def store(stack: LocalStack) -> Store:
    return Store(stack.names["DataTable"])


def seed(store: Store, site: str, rangers: list[tuple[str, str, str]]) -> None:
    store.put_site({"site_id": site, "name": f"Sitio {site}", "lat": -37.8, "lon": -73.0, "tz": "America/Santiago"})
    for i, (rid, phone, lang) in enumerate(rangers):
        store.put_ranger(site, {"ranger_id": rid, "name": rid, "phone": phone, "lang": lang, "order": i})


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    """Settings are read once per container (sentinela.runtime): a test that changed one leaves none
    behind (this runs after monkeypatch has put the environment back)."""
    yield
    from sentinela import runtime

    runtime.reset()


CLOCK_T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)  # 11:00 in Santiago (UTC-3 in November)


@pytest.fixture()
def clock() -> Iterator[Callable[[dt.datetime], None]]:
    """Pins the core's clock (sentinela.domain.clock) at CLOCK_T0; call it to move the clock."""
    from sentinela.domain import clock as core_clock

    core_clock.pin(CLOCK_T0)
    yield core_clock.pin
    core_clock.pin(None)

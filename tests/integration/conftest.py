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


CLOCK_T0 = dt.datetime(2026, 11, 28, 14, 0, tzinfo=dt.UTC)  # 11:00 in Santiago (UTC-3 in November)


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.datetime], None]:
    """Pins the clock the core reads (SENTINELA_NOW) at CLOCK_T0; call it to move the clock."""
    def set_to(t: dt.datetime) -> None:
        monkeypatch.setenv("SENTINELA_NOW", t.strftime("%Y-%m-%dT%H:%M:%SZ"))

    set_to(CLOCK_T0)
    return set_to

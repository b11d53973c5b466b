"""Sites and rangers as data: read a roster file (YAML or JSON), validate it, write it to the store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from .messages import LANGS
from .sms import valid_e164
from .store import Store


class RosterError(ValueError):
    pass


def load_roster(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise RosterError(f"{p}: expected a mapping with 'sites' and 'rangers'")
    sites = data.get("sites") or []
    rangers = data.get("rangers") or []
    site_ids = {s.get("site_id") for s in sites}
    problems: list[str] = []
    for i, s in enumerate(sites):
        if not s.get("site_id"):
            problems.append(f"sites[{i}]: site_id is missing")
    for i, r in enumerate(rangers):
        where = f"rangers[{i}] ({r.get('name', '?')})"
        if not r.get("ranger_id"):
            problems.append(f"{where}: ranger_id is missing")
        if not valid_e164(str(r.get("phone", ""))):
            problems.append(f"{where}: phone {r.get('phone')!r} is not E.164 (+<country><number>)")
        if r.get("lang", "es") not in LANGS:
            problems.append(f"{where}: lang must be one of {', '.join(LANGS)}")
        unknown = [s for s in r.get("sites", []) if s not in site_ids]
        if unknown:
            problems.append(f"{where}: unknown site(s) {unknown}")
    if problems:
        raise RosterError(f"{p}: " + "; ".join(problems))
    return {"sites": sites, "rangers": rangers}


def import_roster(store: Store, roster: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    for s in roster["sites"]:
        store.put_site(s)
    n = 0
    for order, r in enumerate(roster["rangers"]):
        for site in r.get("sites", []):
            store.put_ranger(site, {k: v for k, v in r.items() if k != "sites"} | {"order": r.get("order", order)})
            n += 1
    return len(roster["sites"]), n

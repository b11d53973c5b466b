"""Sites and rangers as data: read them (YAML, JSON or CSV), validate them, write them to the store, and
tell who is on call at a given moment in the site's local time."""

from __future__ import annotations

import contextlib
import csv
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from sentinela.domain.messages import LANGS
from sentinela.domain.phone import valid_e164
from sentinela.domain.policy import validate_override
from sentinela.domain.repositories import PeopleRepository

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ROLES = ("primary", "backup")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")
_SHIFT_TEXT = re.compile(r"^\s*(?:(?P<days>[a-z,\-]+)\s+)?(?P<start>\d\d:\d\d)\s*-\s*(?P<end>\d\d:\d\d)\s*$")


class RosterError(ValueError):
    pass


# --- shifts ---------------------------------------------------------------------------------------
def _expand_days(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if a not in DAYS or b not in DAYS:
                raise RosterError(f"unknown day in {part!r} (use {', '.join(DAYS)})")
            i, j = DAYS.index(a), DAYS.index(b)
            out += [DAYS[(i + k) % 7] for k in range((j - i) % 7 + 1)]
        elif part in DAYS:
            out.append(part)
        else:
            raise RosterError(f"unknown day {part!r} (use {', '.join(DAYS)})")
    return out


def parse_shift(value: Any) -> dict[str, Any]:
    """A shift as ``{"days": [...], "start": "HH:MM", "end": "HH:MM"}`` (local time; end <= start runs
    overnight into the next day) or as text ``"mon-fri 08:00-20:00"`` (days optional: every day)."""
    if isinstance(value, str):
        m = _SHIFT_TEXT.match(value.lower())
        if not m:
            raise RosterError(f"shift {value!r} is not like 'mon-fri 08:00-20:00'")
        days = _expand_days(m["days"]) if m["days"] else list(DAYS)
        start, end = m["start"], m["end"]
    elif isinstance(value, Mapping):
        raw_days = value.get("days") or list(DAYS)
        days = _expand_days(raw_days) if isinstance(raw_days, str) else [str(d).lower() for d in raw_days]
        if any(d not in DAYS for d in days):
            raise RosterError(f"shift days {raw_days!r}: use {', '.join(DAYS)}")
        start, end = str(value.get("start", "")), str(value.get("end", ""))
    else:
        raise RosterError(f"shift {value!r}: expected text or a mapping with days, start, end")
    for t in (start, end):
        if not _HHMM.match(t):
            raise RosterError(f"shift time {t!r} is not HH:MM")
    return {"days": days, "start": start, "end": end}


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def in_shift(shift: Mapping[str, Any] | str, local: datetime) -> bool:
    if not isinstance(shift, Mapping):
        try:
            shift = parse_shift(shift)  # items written without the importer may hold the text form
        except RosterError:
            return False  # `sentinela rangers import` refuses these; an unreadable shift covers nothing
    day, prev = DAYS[local.weekday()], DAYS[(local.weekday() - 1) % 7]
    t, start, end = local.hour * 60 + local.minute, _minutes(shift["start"]), _minutes(shift["end"])
    days = shift.get("days") or DAYS
    if start < end:
        return day in days and start <= t < end
    return (day in days and t >= start) or (prev in days and t < end)  # overnight


def zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def is_on_call(ranger: Mapping[str, Any], site: Mapping[str, Any] | None, when: datetime) -> bool:
    """On call at ``when``: not switched off, number not marked invalid, and inside one of the shifts
    in the site's local time. A ranger without shifts is always on call."""
    if ranger.get("on_call", True) is False or ranger.get("number_invalid"):
        return False
    shifts = ranger.get("shifts") or []
    if not shifts:
        return True
    local = when.astimezone(zone((site or {}).get("tz")))
    return any(in_shift(s, local) for s in shifts)


def next_change(ranger: Mapping[str, Any], site: Mapping[str, Any] | None, when: datetime) -> datetime | None:
    """When the ranger's on-call state next flips (minute resolution, within a week); None if never."""
    if not ranger.get("shifts"):
        return None
    now = is_on_call(ranger, site, when)
    t = when.replace(second=0, microsecond=0)
    for _ in range(7 * 24 * 60):
        t += timedelta(minutes=1)
        if is_on_call(ranger, site, t) != now:
            return t
    return None


# --- reading ---------------------------------------------------------------------------------------
def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return json.loads(text)
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines()))
    return yaml.safe_load(text)


def _csv_value(v: str | None) -> Any:
    return None if v is None or v.strip() == "" else v.strip()


def site_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row (site_id,name,lat,lon,tz,lead) as a site mapping."""
    out: dict[str, Any] = {k: _csv_value(v) for k, v in row.items() if k and _csv_value(v) is not None}
    for k in ("lat", "lon"):
        if k in out:
            with contextlib.suppress(ValueError):  # left as text: validation names it
                out[k] = float(out[k])
    return out


def ranger_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """A CSV row (ranger_id,name,phone,lang,sites,shifts,role,order,on_call) as a ranger mapping; sites and
    shifts are separated by ';' (``mon-fri 08:00-20:00; sat 09:00-13:00``)."""
    out: dict[str, Any] = {k: _csv_value(v) for k, v in row.items() if k and _csv_value(v) is not None}
    if "sites" in out:
        out["sites"] = [s.strip() for s in str(out["sites"]).split(";") if s.strip()]
    if "shifts" in out:
        out["shifts"] = [s.strip() for s in str(out["shifts"]).split(";") if s.strip()]
    if "order" in out:
        out["order"] = int(out["order"]) if str(out["order"]).isdigit() else out["order"]
    if "on_call" in out:
        out["on_call"] = str(out["on_call"]).lower() not in ("false", "no", "0")
    return out


def check_site(s: dict[str, Any], where: str) -> list[str]:
    problems = []
    if not s.get("site_id"):
        problems.append(f"{where}: site_id is missing")
    if s.get("tz") is not None:
        try:
            ZoneInfo(str(s["tz"]))
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{where}: time zone {s['tz']!r} is unknown (e.g. America/Santiago)")
    for k, lim in (("lat", 90), ("lon", 180)):
        v = s.get(k)
        if v is not None and (not isinstance(v, int | float) or not -lim <= v <= lim):
            problems.append(f"{where}: {k} {v!r} is not a number within ±{lim}")
    problems += validate_override(s.get("policy"), f"{where}: policy")
    return problems


def check_ranger(r: dict[str, Any], where: str, site_ids: set[str] | None) -> list[str]:
    problems = []
    if not r.get("ranger_id"):
        problems.append(f"{where}: ranger_id is missing")
    if not valid_e164(str(r.get("phone", ""))):
        problems.append(f"{where}: phone {r.get('phone')!r} is not E.164 (+<country><number>)")
    if r.get("lang", "es") not in LANGS:
        problems.append(f"{where}: lang must be one of {', '.join(LANGS)}")
    if r.get("role", "primary") not in ROLES:
        problems.append(f"{where}: role must be one of {', '.join(ROLES)}")
    if not r.get("sites"):
        problems.append(f"{where}: covers no site (sites: [...])")
    elif site_ids is not None:
        unknown = [s for s in r.get("sites", []) if s not in site_ids]
        if unknown:
            problems.append(f"{where}: unknown site(s) {unknown}")
    shifts = []
    for sh in r.get("shifts") or []:
        try:
            shifts.append(parse_shift(sh))
        except RosterError as exc:
            problems.append(f"{where}: {exc}")
    if not problems:
        r["shifts"] = shifts
    return problems


def validate(sites: list[dict[str, Any]], rangers: list[dict[str, Any]],
             known_sites: set[str] | None = None) -> list[str]:
    """Every problem, as sentences; normalises shifts in place. ``known_sites``: sites already stored."""
    site_ids = {str(s.get("site_id")) for s in sites} | (known_sites or set())
    problems: list[str] = []
    for i, s in enumerate(sites):
        problems += check_site(s, f"sites[{i}] ({s.get('site_id', '?')})")
    for i, r in enumerate(rangers):
        problems += check_ranger(r, f"rangers[{i}] ({r.get('name', r.get('ranger_id', '?'))})", site_ids)
    covers: dict[str, set[str]] = {}
    for r in rangers:
        for s in r.get("sites") or []:
            covers.setdefault(s, set()).add(str(r.get("ranger_id")))
    for s in sites:
        lead = s.get("lead")
        if lead and rangers and lead not in covers.get(str(s.get("site_id")), set()):
            problems.append(f"site {s.get('site_id')}: lead {lead!r} is not a ranger of that site")
    return problems


def load_file(path: str | Path, kind: str = "roster") -> dict[str, list[dict[str, Any]]]:
    """Read a roster (``sites`` and ``rangers``), or only sites / only rangers (``kind``), from YAML, JSON
    or CSV (a CSV holds one kind). Not validated yet: see :func:`validate`."""
    p = Path(path)
    data = _read(p)
    if isinstance(data, list):  # CSV rows, or a YAML list of one kind
        if kind == "roster":
            raise RosterError(f"{p}: a list holds either sites or rangers; use `sentinela sites|rangers import`")
        rows = [site_from_row(r) if kind == "sites" else ranger_from_row(r) for r in data] \
            if p.suffix.lower() == ".csv" else data
        return {"sites": rows if kind == "sites" else [], "rangers": rows if kind == "rangers" else []}
    if not isinstance(data, dict):
        raise RosterError(f"{p}: expected a mapping with 'sites' and 'rangers'")
    sites, rangers = list(data.get("sites") or []), list(data.get("rangers") or [])
    if kind == "sites":
        rangers = []
    elif kind == "rangers":
        sites = []
    return {"sites": sites, "rangers": rangers}


def load_roster(path: str | Path, known_sites: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    roster = load_file(path)
    problems = validate(roster["sites"], roster["rangers"], known_sites)
    if problems:
        raise RosterError(f"{path}: " + "; ".join(problems))
    return roster


def import_roster(store: PeopleRepository, roster: dict[str, list[dict[str, Any]]]) -> tuple[int, int]:
    for s in roster["sites"]:
        store.put_site(s)
    n = 0
    for order, r in enumerate(roster["rangers"]):
        for site in r.get("sites", []):
            store.put_ranger(site, {k: v for k, v in r.items() if k != "sites"} | {"order": r.get("order", order)})
            n += 1
    return len(roster["sites"]), n

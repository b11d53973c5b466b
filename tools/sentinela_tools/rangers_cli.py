"""`sentinela sites ...` and `sentinela rangers ...`: import (YAML, JSON or CSV), list, and who is on call.

Against a table (``--table NAME``) or a deployed stack (``--stack NAME``: its DataTableName output).
A file with both ``sites:`` and ``rangers:`` serves both: `sites import` takes its sites, `rangers import` its rangers.
The roster code (PyYAML, the AWS SDK) is imported by the commands, not here: registering them must not
need what a recorder-only install leaves out.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _emit(args: argparse.Namespace, obj: Any) -> None:
    if getattr(args, "json", False):
        from sentinela_tools.output import emit_json

        emit_json(obj)


def _store(args: argparse.Namespace) -> Any:
    from sentinela.adapters.store import Store
    from sentinela_tools.output import stack_output

    table = args.table or stack_output(args.stack, "DataTableName")
    return Store(table)


def _target(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--table", help="DynamoDB table name (the local stack's, or a deployed one)")
    g.add_argument("--stack", help="a deployed stack name (reads its DataTableName output)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _import(args: argparse.Namespace, kind: str) -> int:
    from sentinela.services.roster import RosterError, import_roster, load_file, validate

    try:
        data = load_file(args.file, kind)
    except (RosterError, OSError, ValueError) as exc:
        return _err(f"{args.file}: {exc}")
    store = _store(args)
    known = {s["site_id"] for s in store.list_sites()} if kind == "rangers" else set()
    problems = validate(data["sites"], data["rangers"], known)
    if problems:
        return _err(f"{args.file}: nothing imported: " + "; ".join(problems))
    sites, assignments = import_roster(store, data)
    removed = _sync(store, data["rangers"]) if getattr(args, "sync", False) else []
    print(f"imported {sites} site(s) and {assignments} ranger assignment(s) into {store.table.name}"
          + (f"; removed {len(removed)} not in the file: " + ", ".join(removed) if removed else ""))
    _emit(args, {"table": store.table.name, "sites": sites, "ranger_assignments": assignments,
                 "removed": removed})
    return 0


def _sync(store: Any, rangers: list[dict[str, Any]]) -> list[str]:
    """With --sync the file is the whole roster of the sites it names: anyone at those sites who is not
    in it is taken off (``site/ranger``). Sites the file does not name are left alone."""
    keep: dict[str, set[str]] = {}
    for r in rangers:
        for site in r.get("sites", []):
            keep.setdefault(site, set()).add(str(r["ranger_id"]))
    removed = []
    for site, ids in sorted(keep.items()):
        for r in store.rangers(site):
            if r["ranger_id"] not in ids and store.delete_ranger(site, r["ranger_id"]):
                removed.append(f"{site}/{r['ranger_id']}")
    return removed


def cmd_rangers_remove(args: argparse.Namespace) -> int:
    store = _store(args)
    sites = [args.site] if args.site else sorted(s["site_id"] for s in store.list_sites())
    removed = [f"{site}/{args.ranger_id}" for site in sites if store.delete_ranger(site, args.ranger_id)]
    if not removed:
        return _err(f"no ranger {args.ranger_id!r} at " + (f"site {args.site}" if args.site else "any site")
                    + f" in {store.table.name}")
    lead_of = [s["site_id"] for s in store.list_sites()
               if s.get("lead") == args.ranger_id and f"{s['site_id']}/{args.ranger_id}" in removed]
    print(f"removed {', '.join(removed)}" + (f" (still named lead of {', '.join(lead_of)}: import the site "
                                              "with a new lead)" if lead_of else ""))
    _emit(args, {"removed": removed, "still_lead_of": lead_of})
    return 0


def cmd_sites_import(args: argparse.Namespace) -> int:
    return _import(args, "sites")


def cmd_rangers_import(args: argparse.Namespace) -> int:
    return _import(args, "rangers")


def cmd_sites_list(args: argparse.Namespace) -> int:
    sites = sorted(_store(args).list_sites(), key=lambda s: s["site_id"])
    _emit(args, [{k: v for k, v in s.items() if k not in ("pk", "sk", "gsi1pk", "gsi1sk")} for s in sites])
    for s in sites:
        over = " policy:" + ",".join(sorted((s.get("policy") or {}).get("classes", {}))) if s.get("policy") else ""
        print(f"{s['site_id']}\t{s.get('name', '')}\t{s.get('lat', '')},{s.get('lon', '')}\t{s.get('tz', 'UTC')}\t"
              f"lead={s.get('lead', '-')}{over}")
    if not sites:
        print("(no sites)")
    return 0


def _shifts(r: dict[str, Any]) -> str:
    out = []
    for s in r.get("shifts") or []:
        if isinstance(s, dict):
            out.append(f"{','.join(s.get('days', []))} {s.get('start')}-{s.get('end')}")
        else:
            out.append(str(s))
    return "; ".join(out) or "always"


def _sites(args: argparse.Namespace, store: Any) -> list[dict[str, Any]]:
    from sentinela.services.roster import RosterError

    sites = store.list_sites()
    if args.site:
        sites = [s for s in sites if s["site_id"] == args.site]
        if not sites:
            raise RosterError(f"no site {args.site!r} in {store.table.name}")
    return sorted(sites, key=lambda s: s["site_id"])


def cmd_rangers_list(args: argparse.Namespace) -> int:
    from sentinela.services.roster import RosterError

    store = _store(args)
    try:
        sites = _sites(args, store)
    except RosterError as exc:
        return _err(str(exc))
    from sentinela.domain.phone import mask_phone

    listed: list[dict[str, Any]] = []
    for s in sites:
        for r in store.rangers(s["site_id"]):
            flags = [f for f, on in (("lead", s.get("lead") == r["ranger_id"]),
                                     ("off", r.get("on_call") is False),
                                     ("NUMBER INVALID", bool(r.get("number_invalid")))) if on]
            row = {"site": s["site_id"], "ranger_id": r["ranger_id"], "name": r.get("name", ""),
                   "phone": mask_phone(r["phone"]), "lang": r.get("lang", "es"),
                   "role": r.get("role", "primary"), "shifts": _shifts(r), "flags": flags}
            listed.append(row)
            print("\t".join(str(v) for k, v in row.items() if k != "flags")
                  + (f"\t[{', '.join(flags)}]" if flags else ""))
    _emit(args, listed)
    return 0


def cmd_rangers_oncall(args: argparse.Namespace) -> int:
    from sentinela.services.roster import RosterError, is_on_call, next_change, zone

    try:
        at = datetime.fromisoformat(args.at.replace("Z", "+00:00")) if args.at else datetime.now(UTC)
    except ValueError:
        return _err(f"--at {args.at!r} is not an ISO time (e.g. 2026-11-28T14:00:00Z)")
    if at.tzinfo is None:
        return _err("--at needs a time zone (Z or +HH:MM)")
    store = _store(args)
    try:
        sites = _sites(args, store)
    except RosterError as exc:
        return _err(str(exc))
    report: list[dict[str, Any]] = []
    for s in sites:
        local = at.astimezone(zone(s.get("tz")))
        rangers = store.rangers(s["site_id"])
        on = [r for r in rangers if is_on_call(r, s, at)]
        report.append({"site": s["site_id"], "at_local": local.isoformat(), "tz": s.get("tz", "UTC"),
                       "rangers": [{"ranger_id": r["ranger_id"], "role": r.get("role", "primary"),
                                    "on_call": r in on,
                                    "changes_at": (lambda c: c.isoformat() if c else None)(next_change(r, s, at))}
                                   for r in rangers]})
        print(f"{s['site_id']} at {local:%a %d/%m %H:%M} {s.get('tz', 'UTC')}: "
              f"{len(on)} of {len(rangers)} on call")
        for r in rangers:
            state = "ON " if r in on else "off"
            change = next_change(r, s, at)
            until = f" (until {change.astimezone(zone(s.get('tz'))):%a %H:%M})" if change and r in on else (
                f" (from {change.astimezone(zone(s.get('tz'))):%a %H:%M})" if change else "")
            print(f"  {state} {r['ranger_id']:<12} {r.get('role', 'primary'):<8} {_shifts(r)}{until}")
    _emit(args, report)
    return 0


def register(sub: Any) -> None:
    s = sub.add_parser("sites", help="sites: import, list")
    ss = s.add_subparsers(dest="sites_cmd", required=True)
    si = ss.add_parser("import", help="import sites from YAML/JSON ('sites:' list) or CSV "
                                      "(site_id,name,lat,lon,tz,lead)")
    si.add_argument("file")
    _target(si)
    si.set_defaults(fn=cmd_sites_import)
    sl = ss.add_parser("list", help="list the sites")
    _target(sl)
    sl.set_defaults(fn=cmd_sites_list)

    r = sub.add_parser("rangers", help="rangers: import, remove, list, who is on call")
    rs = r.add_subparsers(dest="rangers_cmd", required=True)
    ri = rs.add_parser("import", help="import rangers from YAML/JSON ('rangers:' list) or CSV "
                                      "(ranger_id,name,phone,lang,sites,shifts,role,order,on_call)")
    ri.add_argument("file")
    ri.add_argument("--sync", action="store_true",
                    help="the file is the whole roster of the sites it names: remove their other rangers")
    _target(ri)
    ri.set_defaults(fn=cmd_rangers_import)
    rm = rs.add_parser("remove", help="take a ranger off one site (--site) or every site")
    rm.add_argument("ranger_id")
    rm.add_argument("--site", help="only this site (default: every site)")
    _target(rm)
    rm.set_defaults(fn=cmd_rangers_remove)
    rl = rs.add_parser("list", help="list rangers per site (phone numbers masked)")
    rl.add_argument("--site")
    _target(rl)
    rl.set_defaults(fn=cmd_rangers_list)
    ro = rs.add_parser("oncall", help="who is on call now (or --at), in each site's local time")
    ro.add_argument("--site")
    ro.add_argument("--at", help="an ISO time with zone, e.g. 2026-11-28T14:00:00Z (default: now)")
    _target(ro)
    ro.set_defaults(fn=cmd_rangers_oncall)

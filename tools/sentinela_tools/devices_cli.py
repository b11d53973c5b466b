"""`sentinela devices add|revoke|list` (against a table or a deployed stack) and `sentinela upload`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def _store(args: argparse.Namespace) -> Any:
    from sentinela.adapters.store import Store
    from sentinela_tools.output import stack_output

    return Store(args.table or stack_output(args.stack, "DataTableName"))


def _emit(args: argparse.Namespace, obj: Any) -> None:
    if getattr(args, "json", False):
        from sentinela_tools.output import emit_json

        emit_json(obj)


def cmd_add(args: argparse.Namespace) -> int:
    from sentinela.services.devices import DeviceError, add_device

    try:
        secret = add_device(_store(args), args.site, args.device, args.cadence, args.lat, args.lon)
    except DeviceError as exc:
        return _err(str(exc))
    where = f" at {args.lat:.5f},{args.lon:.5f}" if args.lat is not None else ""
    print(f"device {args.device} added to site {args.site}{where} (expected to upload every {args.cadence} s)")
    print(f"secret (shown once; put it in the recorder's secret file, it cannot be shown again): {secret}")
    _emit(args, {"site": args.site, "device": args.device, "cadence_s": args.cadence, "lat": args.lat,
                 "lon": args.lon, "secret": secret})
    return 0


def cmd_locate(args: argparse.Namespace) -> int:
    from sentinela.services.devices import DeviceError, locate_device

    try:
        locate_device(_store(args), args.site, args.device, args.lat, args.lon)
    except DeviceError as exc:
        return _err(str(exc))
    print(f"device {args.device} at site {args.site} is at {args.lat:.5f},{args.lon:.5f} (alerts link there)")
    _emit(args, {"site": args.site, "device": args.device, "lat": args.lat, "lon": args.lon})
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from sentinela.services.devices import DeviceError, revoke_device

    try:
        revoke_device(_store(args), args.site, args.device)
    except DeviceError as exc:
        return _err(str(exc))
    print(f"device {args.device} at site {args.site} revoked: its secret no longer gets upload permission")
    _emit(args, {"site": args.site, "device": args.device, "status": "revoked"})
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from sentinela.services.devices import list_devices

    devices = list_devices(_store(args), args.site)
    for d in devices:
        where = f"\t{d.lat:.5f},{d.lon:.5f}" if d.lat is not None and d.lon is not None else "\t(site centre)"
        print(f"{d.site_id}\t{d.device_id}\t{d.status}\tcadence {d.cadence_s} s{where}\tadded {d.created_at}"
              + (f"\trevoked {d.revoked_at}" if d.revoked_at else ""))
    if not devices:
        print("no devices")
    _emit(args, [asdict(d) for d in devices])
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from sentinela_tools.uploader import AuthError, Uploader

    folder = Path(args.folder)
    if not folder.is_dir():
        return _err(f"{folder} is not a folder")
    try:
        secret = Path(args.secret_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        return _err(f"cannot read the secret file: {exc.strerror or exc}")
    if not secret:
        return _err(f"{args.secret_file} is empty")
    up = Uploader(folder, args.endpoint, args.site, args.device, secret, flac=not args.no_flac,
                  base_delay_s=args.retry_base, max_delay_s=args.retry_max)
    try:
        report = up.run(watch=args.watch, interval_s=args.interval, settle_s=args.settle)
    except AuthError as exc:
        return _err(str(exc))
    waiting = report.count("waiting") + report.count("retry")
    print(f"{report.count('sent')} sent, {report.count('duplicate')} already there, {waiting} waiting to retry, "
          f"{report.count('failed')} refused (in failed/); FLAC saved {report.bytes_saved} bytes")
    _emit(args, {"sent": report.count("sent"), "duplicate": report.count("duplicate"), "waiting": waiting,
                 "failed": report.count("failed"), "bytes_saved": report.bytes_saved,
                 "files": [{"name": r.name, "outcome": r.outcome, "key": r.key} for r in report.results]})
    return 0


def _target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", help="DynamoDB table name")
    p.add_argument("--stack", help="a deployed stack name (reads its DataTableName output)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register(sub: Any) -> None:
    d = sub.add_parser("devices", help="recorders allowed to upload: add, locate, revoke, list")
    ds = d.add_subparsers(dest="devices_cmd", required=True)
    a = ds.add_parser("add", help="register a recorder and print its secret (once)")
    a.add_argument("site")
    a.add_argument("device")
    a.add_argument("--cadence", type=int, default=600, help="expected seconds between uploads (default 600)")
    a.add_argument("--lat", type=float, help="where the recorder is, decimal degrees (the alert's map link; "
                                             "default: the site's centre)")
    a.add_argument("--lon", type=float, help="with --lat")
    _target(a)
    a.set_defaults(fn=cmd_add)
    r = ds.add_parser("revoke", help="stop a recorder's secret from working")
    r.add_argument("site")
    r.add_argument("device")
    _target(r)
    r.set_defaults(fn=cmd_revoke)
    lo = ds.add_parser("locate", help="set where a recorder is (the alert's map link points there)")
    lo.add_argument("site")
    lo.add_argument("device")
    lo.add_argument("--lat", type=float, required=True)
    lo.add_argument("--lon", type=float, required=True)
    _target(lo)
    lo.set_defaults(fn=cmd_locate)
    ls = ds.add_parser("list", help="list recorders")
    ls.add_argument("--site", help="only this site")
    _target(ls)
    ls.set_defaults(fn=cmd_list)

    u = sub.add_parser("upload", help="send a folder of recordings (recorder side; HTTP only, no AWS SDK)")
    u.add_argument("folder", help="where the recorder writes its files")
    u.add_argument("--endpoint", required=True, help="the upload endpoint, https://.../uploads")
    u.add_argument("--site", required=True)
    u.add_argument("--device", required=True)
    u.add_argument("--secret-file", required=True, help="file holding the device secret")
    u.add_argument("--watch", action="store_true", help="keep running: scan every --interval seconds")
    u.add_argument("--interval", type=float, default=30.0, help="seconds between scans with --watch (default 30)")
    u.add_argument("--settle", type=float, default=2.0,
                   help="seconds between the two scans that prove a file is finished (default 2)")
    u.add_argument("--no-flac", action="store_true", help="send WAV files as they are")
    u.add_argument("--retry-base", type=float, default=30.0, help="first retry delay, seconds (default 30)")
    u.add_argument("--retry-max", type=float, default=3600.0, help="longest retry delay, seconds (default 3600)")
    u.add_argument("--json", action="store_true", help="print what was sent as JSON when the run ends")
    u.set_defaults(fn=cmd_upload)

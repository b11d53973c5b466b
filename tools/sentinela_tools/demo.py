"""`sentinela demo`: the whole flow on the embedded local stack, with the real handlers and model."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sentinela.adapters.store import Store
from sentinela.domain.keys import AUDIO_EXTENSIONS
from sentinela.services.devices import add_device
from sentinela.services.roster import import_roster, load_roster
from sentinela_tools.local.stack import REPO, LocalStack
from sentinela_tools.progress import progress as progress_bar

SITE = "nahuelbuta-norte"
DEVICES = ("rec-01", "rec-02", "rec-03", "rec-04")
# Where the demo's recorders stand, a few hundred metres around the site's centre: the texts link there.
PLACES = {"rec-01": (-37.7891, -72.9952), "rec-02": (-37.7958, -72.9870), "rec-03": (-37.8004, -72.9936),
          "rec-04": (-37.7917, -73.0021)}


def find_audio(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)


def run_demo(audio: Path | None, json_out: Path | None, card: Path | None = None,
             roster: Path | None = None, out: Any = print, via_uploader: bool = False,
             progress: bool = True) -> dict[str, Any]:
    terminal = sys.stdout  # the real stdout: the handlers' metrics lines go to a log file meanwhile
    if out is print:
        out = functools.partial(print, file=terminal, flush=True)
    files = find_audio(audio) if audio and audio.is_dir() else []
    if not files:
        where = audio or "(none given)"
        out(f"No recordings found under {where}.\n"
            "Point the demo at a folder of .wav/.flac/.ogg/.mp3 files: `sentinela demo --audio DIR`\n"
            "(or `make demo AUDIO=DIR`). Labelled folders like ../shared/audio/dev work as they are;\n"
            "without --audio the demo uses ../shared/audio/dev, else the demo pack in demo/audio.")
        return {"clips_uploaded": 0, "clips_processed": 0, "clips_rejected": 0, "detections": {},
                "alerts": [], "sms": []}
    t0 = time.perf_counter()
    log_path = REPO / "out" / "demo-handlers.log"
    stack = LocalStack(card=card).start()
    try:
        store = Store(stack.names["DataTable"], None)
        n_sites, n_rangers = import_roster(store, load_roster(roster or REPO / "config" / "demo-roster.yaml"))
        out(f"local stack up on {stack.endpoint} (moto), Twilio stub on {stack.twilio.url}; "
            f"{n_sites} site, {n_rangers} on-call rangers")
        # The router classifies while the uploads go on; the handlers' output goes to the log meanwhile.
        with _stderr_to(log_path):
            stack.start_background()
            # One clip a minute, the last a minute ago: the earliest are late uploads, and their texts say so.
            base = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=len(files) + 1)
            keys: dict[str, Path] = {}
            if via_uploader:
                keys = _upload_via_uploader(stack, store, files, base, out)
            else:
                for device, (lat, lon) in PLACES.items():
                    # Registered as `sentinela devices add --lat --lon` would; the secret is not needed
                    # here (these clips go straight to the bucket) and is dropped.
                    add_device(store, SITE, device, 600, lat, lon)
            for i, f in enumerate([] if via_uploader else files):
                key, _ = stack.upload(f, SITE, DEVICES[i % len(DEVICES)], base + dt.timedelta(seconds=60 * i),
                                      ext=f.suffix.lower().lstrip("."))
                keys[key] = f
            out(f"uploaded {len(files)} clips from {audio}; classifying ...")
            with progress_bar(total=len(keys), desc="classified", unit="clip", stream=terminal,
                              enabled=None if progress else False) as bar:
                _wait(stack, on_tick=lambda: bar.set_done(stack.invocations["classify"]))
            stack.stop_background()
            stack.run_until_idle()
        out(f"(handler metrics and decoder warnings: {log_path})")
        result = _summarise(stack, store, keys, audio, time.perf_counter() - t0, json_out, out)
        # What ops would see of this run: `sentinela status`, on the local stack (sentinela_tools.ops_cli).
        from sentinela_tools.ops_cli import local_status, render_status

        result["status"] = local_status(stack)
        out("")
        out(render_status(result["status"]))
        result["latency"] = _latency_probe(stack, store, keys, out)
        if json_out:
            json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
        return result
    finally:
        stack.stop()


def _upload_via_uploader(stack: LocalStack, store: Store, files: list[Path], base: dt.datetime,
                         out: Any) -> dict[str, Path]:
    """The recorder path: register each device, lay its files out as a recorder would (named by their
    UTC time), and let `sentinela upload`'s uploader send them through the presign endpoint over HTTP."""
    import shutil
    import tempfile

    from sentinela_tools.uploader import Uploader

    keys: dict[str, Path] = {}
    saved = 0
    problems: list[str] = []
    log = REPO / "out" / "demo-handlers.log"  # the handlers' metrics lines, as during classification
    with tempfile.TemporaryDirectory(prefix="sentinela-recorders-") as tmp, _stderr_to(log):
        for d, device in enumerate(DEVICES):
            folder = Path(tmp) / device
            folder.mkdir()
            originals: dict[str, Path] = {}
            for i in range(d, len(files), len(DEVICES)):
                name = (base + dt.timedelta(seconds=60 * i)).strftime("%Y%m%dT%H%M%SZ") + files[i].suffix.lower()
                shutil.copyfile(files[i], folder / name)
                originals[name] = files[i]
            secret = add_device(store, SITE, device, 600, *PLACES[device])
            up = Uploader(folder, stack.uploads_url, SITE, device, secret)
            up.scan()
            report = up.run_pass()
            saved += report.bytes_saved
            keys.update({r.key: originals[r.name] for r in report.results if r.key and r.outcome == "sent"})
            problems += [up.describe(r) for r in report.results if r.outcome not in ("sent", "duplicate")]
    for p in problems:
        out(f"  {p}")
    out(f"the uploader sent {len(keys)} of {len(files)} files through {stack.uploads_url} "
        f"(FLAC saved {saved} bytes)")
    return keys


def _latency_probe(stack: LocalStack, store: Store, keys: dict[str, Path], out: Any) -> dict[str, Any] | None:
    """Upload -> SMS for one clip on the now idle stack, the delay a ranger feels: the clip that opened
    the first incident is sent again to a probe site of its own (so it opens an incident there)."""
    opened = sorted((i for i in store.scan_all() if i.get("type") == "alert" and i.get("outcome") == "opened"),
                    key=lambda i: str(i["key"]))
    path = next((keys[a["key"]] for a in opened if a["key"] in keys), None)
    if path is None:
        return None
    site, phone = "latency-probe", "+15005550999"
    store.put_site({"site_id": site, "name": "Latency probe", "lat": -37.79, "lon": -72.99, "tz": "America/Santiago"})
    store.put_ranger(site, {"ranger_id": "probe", "name": "Probe", "phone": phone, "lang": "en"})
    log_path = REPO / "out" / "demo-handlers.log"
    with _stderr_to(log_path):
        stack.start_background()
        t0 = time.perf_counter()
        stack.upload(path, site, "rec-probe", ext=path.suffix.lower().lstrip("."))
        deadline = time.monotonic() + 120
        while not any(m.to == phone for m in stack.twilio.outbox) and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.perf_counter() - t0
        stack.stop_background()
    if not any(m.to == phone for m in stack.twilio.outbox):
        out(f"latency probe: no SMS within 120 s for {path.name}")
        return None
    clip = next(i for i in store.scan_all() if i.get("type") == "clip" and i.get("site_id") == site)
    res = {"file": path.name, "upload_to_sms_s": round(took, 2), "classify_ms": clip.get("processing_ms"),
           "clip_seconds": clip.get("duration_s")}
    out(f"latency: upload -> SMS for one clip ({path.name}, {clip.get('duration_s', 0):.1f} s) on the idle "
        f"local stack: {took:.2f} s, of which classify {clip.get('processing_ms')} ms")
    return res


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """The handlers' metrics (EMF lines on stdout, as in Lambda) and the decoders' complaints (libmpg123
    writes straight to file descriptor 2) go to a log file, so the summary stays readable; the path is
    printed, nothing is lost."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            f.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _wait(stack: LocalStack, timeout_s: float = 3600, on_tick: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.pending() and time.monotonic() < deadline:
        if on_tick:
            on_tick()
        time.sleep(0.2)


def _summarise(stack: LocalStack, store: Store, keys: dict[str, Path], audio: Path | None, wall: float,
               json_out: Path | None, out: Any) -> dict[str, Any]:
    items = store.scan_all()
    clips = [i for i in items if i.get("type") == "clip"]
    dets = [i for i in items if i.get("type") == "detection"]
    alerts = [i for i in items if i.get("type") == "alert"]
    by_status = collections.Counter(c["status"] for c in clips)
    threat_dets = collections.Counter(d["label"] for d in dets if d["kind"] == "threat")
    species = collections.Counter(d["label"].split("_")[-1] for d in dets if d["kind"] == "species")
    rel = {k: str(p.relative_to(audio)) if audio else p.name for k, p in keys.items()}
    out("")
    out(f"clips: {len(keys)} uploaded, {by_status.get('processed', 0)} processed, "
        f"{by_status.get('rejected', 0)} rejected  ({wall:.1f} s wall)")
    for c in sorted((c for c in clips if c["status"] != "processed"), key=lambda c: c["key"]):
        out(f"  {c['status']}: {rel.get(c['key'], c['key'])}: {c.get('reason')}")
    audio_h = sum(c.get("duration_s", 0) for c in clips) / 3600
    out(f"audio: {audio_h:.2f} h; threat detections by class: "
        + (", ".join(f"{k} {v}" for k, v in sorted(threat_dets.items())) or "none"))
    if species:
        out("biodiversity log, top species: " + ", ".join(f"{k} {v}" for k, v in species.most_common(5)))
    outcomes = collections.Counter(str(a.get("outcome", "?")) for a in alerts)
    out(f"alerts: {len(alerts)} (" + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + ")")
    for a in sorted(alerts, key=lambda a: a["key"]):
        held = f"  ({a.get('decision_reason')})" if a.get("outcome") == "held" else ""
        out(f"  {a['threat']:<12} {a['confidence']:.2f}  {a.get('outcome', '?'):<7} {a.get('incident_ref', ''):<6}  "
            f"{rel.get(a['key'], a['key'])}{held}")
    incidents = _incidents(store, items)
    out(f"incidents: {len(incidents)} (only an incident's opening texts; later alerts join it)")
    for inc in incidents:
        out(f"  {inc['ref']} {inc['class']:<12} {inc['state']:<12} opened {inc['opened_at']}, heard "
            f"{inc['first_heard']} .. {inc['last_heard']}, {inc['alerts']} alert(s) joined, {len(inc['sms'])} SMS")
        for m in inc["sms"]:
            out(f"    {m['step']:<6} to {m['to']} ({m['segments']} seg {m['encoding']}): {m['body']}")
    out(f"sms: {len(stack.twilio.outbox)} sent through the Twilio stub")
    result = {
        "clips_uploaded": len(keys),
        "clips_processed": by_status.get("processed", 0),
        "clips_rejected": by_status.get("rejected", 0),
        "detections": dict(threat_dets),
        "alerts": [{"threat": a["threat"], "confidence": a["confidence"], "file": rel.get(a["key"], a["key"]),
                    "clip_id": a["clip_id"]} for a in alerts],
        "rejected": [{"file": rel.get(c["key"], c["key"]), "reason": c.get("reason")}
                     for c in clips if c["status"] == "rejected"],
        "sms": [{"to": m.to, "body": m.body} for m in stack.twilio.outbox],
        "incidents": incidents,
        "wall_s": round(wall, 1),
    }
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        out(f"wrote {json_out}")
    return result


def _incidents(store: Store, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each incident with its SMS (sentinela.services.incidents), oldest first."""
    from sentinela.domain.phone import segments

    sms_by_pk: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for i in items:
        if i.get("type") in ("send", "sms") and str(i.get("pk", "")).startswith("INC#"):  # "sms": before channels
            sms_by_pk[i["pk"]].append(i)
    out = []
    for inc in sorted((i for i in items if i.get("type") == "incident"), key=lambda i: i["first_heard"]):
        texts = sorted(sms_by_pk.get(f"INC#{inc['incident_id']}", []), key=lambda m: str(m.get("created_at")))
        out.append({
            "ref": inc["ref"], "incident_id": inc["incident_id"], "site": inc["site_id"], "class": inc["threat"],
            "group": inc["group"], "state": inc["state"], "opened_at": inc["opened_at"],
            "first_heard": inc["first_heard"], "last_heard": inc["last_heard"], "alerts": inc["alerts"],
            "max_confidence": inc.get("max_confidence"),
            "sms": [{"step": m.get("step"), "to": m["to"], "status": m.get("status"), "body": m["body"],
                     "segments": segments(m["body"]).segments, "encoding": segments(m["body"]).encoding}
                    for m in texts if m.get("status") == "sent"],
        })
    return out

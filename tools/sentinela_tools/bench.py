"""`sentinela bench`: speed, cold start and memory of the classify path, against BirdNET's own runtime.

Every figure comes from one run on the same generated audio (noise, chirps, hum, tones and impulses,
written at 48 kHz and at 44.1 kHz so resampling is paid for), so figures in one report compare.
Benchmarks, not tests: each figure is printed beside its target with PASS or FALL SHORT.

RTF (real-time factor) here is seconds of *audio* per wall-clock second, from decode to detections.
With the card's 1.5 s hop each audio second costs two thirds of a 3 s window, so it is lower than a
"window seconds per second" model throughput (also reported, as ``model_window_rtf``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SEED = 20240607
BLOCK_S = 10
REPO = Path(__file__).resolve().parents[2]
TFLITE_VENV_PYTHON = REPO / ".cache" / "model-build" / "venv" / "bin" / "python"


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    op: str  # ">=" or "<="
    value: float


TARGETS = (
    Target("rtf_2threads", "RTF, 2 threads (audio s / wall s)", ">=", 400.0),
    Target("rtf_1thread", "RTF, 1 thread", ">=", 200.0),
    Target("speedup_vs_tflite", "speed-up vs TFLite, same run", ">=", 4.0),
    Target("cold_start_s", "cold start: import + session (s)", "<=", 0.5),
    Target("peak_rss_mb_10min", "peak RSS, 10-min clip (MB)", "<=", 400.0),
    Target("peak_rss_mb_2h", "peak RSS, 2-h clip (MB)", "<=", 400.0),
    Target("peak_rss_mb_8ch_384k", "peak RSS, 8 ch at 384 kHz (MB)", "<=", 400.0),
    Target("rss_ratio_2h_vs_10min", "peak RSS 2 h / 10 min", "<=", 1.2),
)


# --------------------------------------------------------------------------------------------------
# Synthetic audio: a pure function of (sample index, rate), so it streams to disk block by block.


def synth(start: int, n: int, sr: int) -> np.ndarray:
    """Samples ``start .. start+n`` of the benchmark signal at ``sr``: float32 mono in [-1, 1]."""
    t = (start + np.arange(n, dtype=np.float64)) / sr
    rng = np.random.default_rng([SEED, sr, start])
    x = 0.02 * rng.standard_normal(n)
    # Bird-like chirps: 0.3 s up-sweeps 3 -> 5 kHz every 2 s.
    lc = np.mod(t, 2.0)
    on = lc < 0.3
    phase = 2 * np.pi * (3000.0 * lc + 2000.0 * lc * lc / 0.6)
    x += np.where(on, 0.1 * np.sin(phase) * np.sin(np.pi * np.clip(lc / 0.3, 0, 1)), 0.0)
    # Engine-like hum from 20 to 40 s of every minute; a steady 1 kHz tone from 45 to 55 s.
    lm = np.mod(t, 60.0)
    w = 2 * np.pi * 95.0 * t
    hum = np.sin(w) + 0.5 * np.sin(2 * w) + 0.25 * np.sin(3 * w)
    x += np.where((lm >= 20) & (lm < 40), 0.08 * hum, 0.0)
    x += np.where((lm >= 45) & (lm < 55), 0.05 * np.sin(2 * np.pi * 1000.0 * t), 0.0)
    # Gunshot-like impulses: a decaying noise burst every 7 s.
    li = np.mod(t, 7.0)
    burst = li < 0.3
    x += np.where(burst, 0.8 * np.exp(-li / 0.04) * rng.standard_normal(n), 0.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def write_clip(path: Path, seconds: float, sr: int, channels: int = 1) -> Path:
    """Write ``seconds`` of the signal as 16-bit WAV/FLAC (by suffix), one 10 s block at a time. Extra
    channels carry the same signal at other gains (a recorder's array of microphones)."""
    import soundfile as sf

    total = round(seconds * sr)
    fmt = "FLAC" if path.suffix.lower() == ".flac" else "WAV"
    gains = np.linspace(1.0, 0.5, channels, dtype=np.float32)
    with sf.SoundFile(path, "w", samplerate=sr, channels=channels, subtype="PCM_16", format=fmt) as f:
        for start in range(0, total, BLOCK_S * sr):
            block = synth(start, min(BLOCK_S * sr, total - start), sr)
            f.write(block if channels == 1 else block[:, None] * gains[None, :])
    return path


# --------------------------------------------------------------------------------------------------
# Helpers


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort
    import soundfile as sf
    import soxr

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "soundfile": sf.__version__,
        "libsndfile": sf.__libsndfile_version__,
        "soxr": soxr.__version__,
        "openblas_coretype_set": "OPENBLAS_CORETYPE" in os.environ,
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "sentinela_threads_env": os.environ.get("SENTINELA_THREADS"),
    }


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    core = str(REPO / "layers" / "core")
    env["PYTHONPATH"] = core + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_child(code: str, *args: str, timeout: float = 3600) -> tuple[dict[str, Any], float]:
    """Run ``code`` in a fresh interpreter (this one's python); it prints one JSON line last."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       timeout=timeout, env=_child_env(), check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"child exited {p.returncode}: {tail}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall


# --------------------------------------------------------------------------------------------------
# Speed of the classify path


@dataclass(frozen=True)
class Clip:
    path: Path
    sample_rate: int
    seconds: float


def bench_classify(card_path: Path, clips: list[Clip], threads: tuple[int, ...], batches: tuple[int, ...],
                   repeats: int, say: Callable[[str], None],
                   variant_names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per (threads, batch, model variant). The variants of one config are timed in turn,
    repeat by repeat, so a change of load hits them alike and their ratio holds."""
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card, with_variant
    from sentinela.services.classify import classify_source

    card = load_card(card_path)
    names = variant_names or (card.variant,)
    audio_s = sum(c.seconds for c in clips)
    rows: list[dict[str, Any]] = []
    for th in threads:
        models = {v: BirdNetOnnx(with_variant(card, v), threads=th) for v in names}
        for b in batches:
            walls: dict[str, list[float]] = {v: [] for v in names}
            cpus: dict[str, list[float]] = {v: [] for v in names}
            per_clip: dict[str, dict[str, list[float]]] = {v: {f"{c.sample_rate}": [] for c in clips} for v in names}
            for model in models.values():
                for c in clips:
                    classify_source(c.path, model, batch_size=b)  # warm-up (allocator, caches)
            load0 = _load()
            for _ in range(repeats):
                for v, model in models.items():
                    wall = cpu = 0.0
                    for c in clips:
                        t0, c0 = time.perf_counter(), time.process_time()
                        classify_source(c.path, model, batch_size=b)
                        dt = time.perf_counter() - t0
                        wall += dt
                        cpu += time.process_time() - c0
                        per_clip[v][f"{c.sample_rate}"].append(dt)
                    walls[v].append(wall)
                    cpus[v].append(cpu)
            for v in names:
                wall, cpu = _median(walls[v]), _median(cpus[v])
                # CPU seconds (all threads, spin-waiting included): at 1 thread, audio/cpu is what the RTF
                # would be on an idle core, so it is the figure to trust when the machine is shared.
                row: dict[str, Any] = {"variant": v, "threads": th, "batch": b, "rtf": audio_s / wall,
                                       "rtf_min": audio_s / max(walls[v]), "rtf_max": audio_s / min(walls[v]),
                                       "repeats": repeats, "wall_s": wall, "cpu_s": cpu,
                                       "rtf_per_cpu_second": audio_s / cpu, "load_avg": load0}
                for c in clips:
                    row[f"rtf_{c.sample_rate}hz"] = c.seconds / _median(per_clip[v][f"{c.sample_rate}"])
                rows.append(row)
                say(f"  {v:<6} threads={th} batch={b:<3d} RTF {row['rtf']:7.1f} "
                    f"[{row['rtf_min']:.1f}-{row['rtf_max']:.1f}]  ("
                    + ", ".join(f"{c.sample_rate} Hz {row[f'rtf_{c.sample_rate}hz']:.1f}" for c in clips)
                    + f"; {row['rtf_per_cpu_second']:.1f} audio s per CPU s; load {load0[0] if load0 else '-'})")
    return rows


def variant_summary(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    """Batch 1 and the best batch at each thread count, with the spread over the repeats."""
    out: dict[str, Any] = {"variant": variant}
    for th, key in ((1, "rtf_1thread"), (2, "rtf_2threads")):
        mine = [r for r in rows if r["variant"] == variant and r["threads"] == th]
        if not mine:
            continue
        best = max(mine, key=lambda r: float(r["rtf"]))
        b1 = next((r for r in mine if r["batch"] == 1), None)
        out |= {key: best["rtf"], f"{key}_batch": best["batch"], f"{key}_range": [best["rtf_min"], best["rtf_max"]]}
        if b1 is not None:
            out |= {f"{key}_b1": b1["rtf"], f"{key}_b1_range": [b1["rtf_min"], b1["rtf_max"]]}
    return out


def bench_stages(card_path: Path, clips: list[Clip], threads: int, batch: int, repeats: int,
                 windows_npy: Path | None) -> dict[str, Any]:
    """Where the time of the classify path goes: decode+resample+windowing vs the model itself."""
    from sentinela.adapters.audio import windows
    from sentinela.adapters.model import BirdNetOnnx
    from sentinela.domain.card import load_card

    card = load_card(card_path)
    model = BirdNetOnnx(card, threads=threads)
    decode: dict[str, float] = {}
    arrays = []
    for c in clips:
        ts = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            ws = [w for _, w in windows(c.path, sample_rate=card.sample_rate, window=card.window_samples,
                                        hop=card.hop_samples)]
            if i:
                ts.append(time.perf_counter() - t0)
        decode[f"{c.sample_rate}"] = _median(ts)
        arrays.append(np.stack(ws))
    all_w = np.concatenate(arrays)
    del arrays
    if windows_npy is not None:
        np.save(windows_npy, all_w)

    def run_model() -> np.ndarray:
        top1 = []
        for i in range(0, len(all_w), batch):
            scores, _ = model.infer(all_w[i : i + batch])
            top1.append(scores.argmax(axis=1))
        return np.concatenate(top1)

    run_model()
    tm = []
    top1 = np.zeros(0, dtype=np.int64)
    for _ in range(repeats):
        t0 = time.perf_counter()
        top1 = run_model()
        tm.append(time.perf_counter() - t0)
    model_s = _median(tm)
    audio_s = sum(c.seconds for c in clips)
    n = len(all_w)
    return {
        "threads": threads, "batch": batch, "windows": n, "audio_s": audio_s,
        "decode_window_s": sum(decode.values()),
        "decode_window_s_by_rate": decode,
        "decode_rtf_by_rate": {k: next(c.seconds for c in clips if f"{c.sample_rate}" == k) / v
                               for k, v in decode.items()},
        "model_s": model_s,
        "model_ms_per_window": 1000 * model_s / n,
        "model_window_rtf": n * card.window_s / model_s,
        "model_audio_rtf": audio_s / model_s,
        "top1": top1.tolist(),
    }


# --------------------------------------------------------------------------------------------------
# BirdNET's own runtime (TFLite), in the model-build venv


def bench_tflite(tflite: Path, windows_npy: Path, python: Path, repeats: int) -> dict[str, Any]:
    if not python.exists():
        return {"available": False, "reason": f"no TFLite runtime: {python} is missing (run `make model`)"}
    if not tflite.exists():
        return {"available": False, "reason": f"TFLite model not found: {tflite} (run `make model`)"}
    script = Path(__file__).resolve().parent / "devtools" / "tflite_bench.py"
    p = subprocess.run([str(python), str(script), str(tflite), str(windows_npy), "--threads", "2",
                        "--repeats", str(repeats)], capture_output=True, text=True, timeout=3600, check=False)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return {"available": False, "reason": f"TFLite benchmark failed: {tail}"}
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    res["available"] = True
    return res


# --------------------------------------------------------------------------------------------------
# Cold start and memory, each in a fresh process

_COLD = """
import json, sys, time
t0 = time.perf_counter()
import onnxruntime, numpy, soundfile
t1 = time.perf_counter()
from sentinela.domain.card import load_card
from sentinela.adapters.model import BirdNetOnnx
import sentinela.services.classify
t2 = time.perf_counter()
from sentinela.domain.card import with_variant
card = load_card(sys.argv[1])
BirdNetOnnx(with_variant(card, sys.argv[2]) if len(sys.argv) > 2 else card, threads=2)
t3 = time.perf_counter()
print(json.dumps({"import_libs_s": t1 - t0, "import_sentinela_s": t2 - t1, "session_s": t3 - t2,
                  "total_s": t3 - t0}))
"""

# Peak memory is the child's VmHWM (high-water RSS of its own address space). Not ru_maxrss: Python
# starts children with vfork + exec, and Linux carries the parent's high-water mark across the exec
# into the child's ru_maxrss (measured: a 340 MB child reported the 995 MB of this process).
_MEMORY = """
import json, resource, sys, threading, time
def status_mb(key="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return 0.0
rss_mb = status_mb
samples = []
stop = threading.Event()
def sample():
    t0 = time.perf_counter()
    while not stop.wait(0.5):
        samples.append((time.perf_counter() - t0, rss_mb()))
from sentinela.domain.card import load_card
from sentinela.services.classify import classify_source
from sentinela.adapters.model import BirdNetOnnx
from sentinela.domain.card import with_variant
card = load_card(sys.argv[1])
model = BirdNetOnnx(with_variant(card, sys.argv[5]) if len(sys.argv) > 5 else card, threads=int(sys.argv[4]))
after_load = status_mb("VmHWM:")
th = threading.Thread(target=sample, daemon=True)
th.start()
t0 = time.perf_counter()
out = classify_source(sys.argv[2], model, batch_size=int(sys.argv[3]))
elapsed = time.perf_counter() - t0
stop.set(); th.join()
peak = status_mb("VmHWM:")
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
n = len(samples)
pick = lambda f: round(samples[min(n - 1, int(f * n))][1], 1) if n else None
print(json.dumps({"peak_rss_mb": peak, "rss_after_load_mb": after_load, "ru_maxrss_mb": maxrss,
                  "elapsed_s": elapsed,
                  "duration_s": out.info.duration_s, "rtf": out.info.duration_s / elapsed,
                  "windows": out.result.windows,
                  "rss_mb_at_10_50_90pct": [pick(0.1), pick(0.5), pick(0.9)],
                  "rss_mb_max_sampled": max((s[1] for s in samples), default=None)}))
"""


def bench_cold(card_path: Path, runs: int, variant: str | None = None) -> dict[str, Any]:
    rows = []
    walls = []
    for _ in range(runs):
        r, wall = _run_child(_COLD, str(card_path), *((variant,) if variant else ()))
        rows.append(r)
        walls.append(wall)
    return {
        "runs": runs,
        "import_libs_s": _median([r["import_libs_s"] for r in rows]),
        "import_sentinela_s": _median([r["import_sentinela_s"] for r in rows]),
        "session_s": _median([r["session_s"] for r in rows]),
        "total_s": _median([r["total_s"] for r in rows]),
        "process_wall_s": _median(walls),
        "all_total_s": [r["total_s"] for r in rows],
    }


def bench_memory(card_path: Path, clip: Path, batch: int, threads: int, variant: str | None = None) -> dict[str, Any]:
    r, wall = _run_child(_MEMORY, str(card_path), str(clip), str(batch), str(threads), *((variant,) if variant else ()))
    r["process_wall_s"] = wall
    r["clip"] = clip.name
    r["clip_bytes"] = clip.stat().st_size
    r["batch"], r["threads"] = batch, threads
    return r


# --------------------------------------------------------------------------------------------------
# The command


def _status(t: Target, value: float | None) -> str:
    if value is None:
        return "n/a"
    ok = value >= t.value if t.op == ">=" else value <= t.value
    return "PASS" if ok else "FALL SHORT"


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def run_bench(args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    from sentinela.config import default_card_path
    from sentinela.domain.card import load_card, variants

    quick = bool(args.quick)
    card_path = Path(args.card) if args.card else default_card_path()
    card = load_card(card_path)
    clip_s = args.clip_seconds or (12.0 if quick else 90.0)
    repeats = args.repeats or (1 if quick else 3)
    threads = (1, 2)
    batches = (1, 8, 32) if not quick else (1, 8)
    names = tuple(args.variants.split(",")) if getattr(args, "variants", None) else variants(card)
    if card.variant not in names:
        names = (card.variant, *names)
    report: dict[str, Any] = {
        "bench": "sentinela", "quick": quick, "variant_in_use": card.variant, "variants_measured": list(names),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_avg_start": _load(), "machine": machine_info(),
        "model": {"card": str(card_path), "id": card.id, "path": str(card.path),
                  "sha256": _sha256(card.path), "card_sha256": card.sha256,
                  "bytes": card.path.stat().st_size if card.path.exists() else None},
    }
    if card.sha256 and report["model"]["sha256"] != card.sha256:
        report["model"]["warning"] = "model sha256 differs from the card's"
    say(f"sentinela bench  model {card.id} ({card.path.name}, sha256 {str(report['model']['sha256'])[:12]}…)")
    mi = report["machine"]
    say(f"  cpu {mi['cpu_model']} x{os.cpu_count()}, onnxruntime {mi['onnxruntime']}, "
        f"numpy {np.__version__}, OPENBLAS_CORETYPE {mi['openblas_coretype'] or 'unset'}, "
        f"load {report['load_avg_start']}")

    with tempfile.TemporaryDirectory(prefix="sentinela-bench-") as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        clips = [Clip(write_clip(tmp / f"bench_{sr}.wav", clip_s, sr), sr, clip_s) for sr in (48000, 44100)]
        report["audio"] = {"clip_s": clip_s, "files": [f"{c.path.name} ({c.sample_rate} Hz, 16-bit mono WAV)"
                                                       for c in clips],
                           "generate_s": time.perf_counter() - t0}
        say(f"classify path, {clip_s:.0f} s clip at 48 kHz + the same at 44.1 kHz, median of {repeats} "
            f"after a warm-up:")
        rows = bench_classify(card_path, clips, threads, batches, repeats, say, names)
        report["rtf_configs"] = rows
        summaries = {v: variant_summary(rows, v) for v in names}
        report["variants"] = summaries
        # The top-level figures are those of the variant the card runs; every variant has its row.
        for key, value in summaries[card.variant].items():
            if key != "variant":
                report[key] = value
        report["fp32"] = summaries.get("graph")
        quantised = [v for v in names if (card.raw.get("model", {}).get("variants", {}).get(v) or {}).get("quantised")]
        report["quantised"] = summaries[quantised[0]] if quantised else {
            "available": False, "reason": "no quantised variant built (see docs/BENCHMARKS.md: int8 failed its "
                                          "accuracy check and was not faster)"}

        npy = tmp / "windows.npy"
        stages = bench_stages(card_path, clips, 2, int(report["rtf_2threads_batch"]), repeats, npy)
        our_top1 = stages.pop("top1")
        best2 = next(r for r in rows
                     if r["threads"] == 2 and r["batch"] == stages["batch"] and r["variant"] == card.variant)
        report["stages_2threads"] = stages
        say(f"  where the time goes (2 threads, batch {stages['batch']}): decode+resample+windows "
            f"{stages['decode_window_s']:.2f} s, model {stages['model_s']:.2f} s "
            f"({stages['model_ms_per_window']:.1f} ms/window, "
            f"{stages['model_window_rtf']:.0f}x in window-seconds), "
            f"of {best2['wall_s']:.2f} s end to end")

        tfl: dict[str, Any]
        if args.skip_tflite:
            tfl = {"available": False, "reason": "skipped (--skip-tflite)"}
        else:
            graph_path = card.path.parent / Path(card.raw.get("model", {}).get("path", card.path.name)).name
            tflite = Path(args.tflite_model) if args.tflite_model else graph_path.with_suffix(".tflite")
            python = Path(args.tflite_python) if args.tflite_python else TFLITE_VENV_PYTHON
            say(f"TFLite ({tflite.name}) through {python}, 2 threads, one window at a time:")
            tfl = bench_tflite(tflite, npy, python, repeats)
        if tfl.get("available"):
            audio_s = sum(c.seconds for c in clips)
            tfl["rtf_b1"] = audio_s / tfl["batch1_s"]
            if tfl.get("batch8_s"):
                tfl["rtf_b8"] = audio_s / tfl["batch8_s"]
            t1 = tfl.pop("top1_b1", [])
            if t1 and len(t1) == len(our_top1):
                same = sum(a == b for a, b in zip(t1, our_top1, strict=True))
                tfl["top1_agreement_vs_onnx"] = same / len(t1)
            tfl["model_only_speedup"] = (tfl["ms_per_window_b1"] / stages["model_ms_per_window"])
            report["tflite_rtf"] = tfl["rtf_b1"]
            report["speedup_vs_tflite"] = report["rtf_2threads"] / tfl["rtf_b1"]
            for summary in summaries.values():
                summary["speedup_vs_tflite"] = summary["rtf_2threads"] / tfl["rtf_b1"]
            say(f"  {tfl['runtime']}: {tfl['ms_per_window_b1']:.1f} ms/window -> RTF {tfl['rtf_b1']:.1f} "
                f"(inference only, decode not counted); batch 8 via resize_tensor_input: {tfl['batch8']}"
                + (f", {tfl['ms_per_window_b8']:.1f} ms/window" if tfl.get("ms_per_window_b8") else ""))
        else:
            report["tflite_rtf"] = None
            report["speedup_vs_tflite"] = None
            say(f"TFLite: {tfl['reason']}")
        report["tflite"] = tfl

        runs = 1 if quick else 3
        say("cold start (fresh process: import onnxruntime, numpy, soundfile, sentinela + session), "
            f"median of {runs}:")
        for v in names:
            cold = bench_cold(card_path, runs, v)
            summaries[v]["cold_start_s"] = cold["total_s"]
            if v == card.variant:
                report["cold_start"] = cold
                report["cold_start_s"] = cold["total_s"]
            say(f"  {v:<6} {cold['total_s']:.2f} s (libs {cold['import_libs_s']:.2f}, "
                f"sentinela {cold['import_sentinela_s']:.2f}, session {cold['session_s']:.2f}); "
                f"whole process incl. interpreter start {cold['process_wall_s']:.2f} s; all {cold['all_total_s']}")

        if args.skip_memory:
            report["memory"] = {"skipped": True}
            report["peak_rss_mb_10min"] = report["peak_rss_mb_2h"] = report["rtf_2h"] = None
            report["peak_rss_mb_8ch_384k"] = None
        else:
            short_s, long_s = (30.0, 120.0) if quick else (600.0, 7200.0)
            say(f"peak memory, fresh process each, batch 8, 2 threads, {short_s:.0f} s and {long_s:.0f} s "
                "clips (16-bit FLAC, 44.1 kHz: decode + resample):")
            mem: dict[str, Any] = {}
            for key, secs in (("10min", short_s), ("2h", long_s)):
                t0 = time.perf_counter()
                path = write_clip(tmp / f"mem_{key}.flac", secs, 44100)
                gen = time.perf_counter() - t0
                r = bench_memory(card_path, path, 8, 2)
                r["generate_s"] = gen
                mem[key] = r
                path.unlink()
                say(f"  {key}: peak RSS {r['peak_rss_mb']:.0f} MB "
                    f"(after model load {r['rss_after_load_mb']:.0f} MB; "
                    f"sampled at 10/50/90% {r['rss_mb_at_10_50_90pct']}), RTF {r['rtf']:.1f} "
                    f"({r['duration_s']:.0f} s in {r['elapsed_s']:.1f} s)")
            # The worst shape recorders send: 8 channels at 384 kHz (16-bit WAV). Peak memory is reached
            # within the first decode blocks (10 s each), so one minute shows it.
            wide_s = 20.0 if quick else 60.0
            t0 = time.perf_counter()
            path = write_clip(tmp / "mem_8ch_384k.wav", wide_s, 384000, channels=8)
            gen = time.perf_counter() - t0
            r = bench_memory(card_path, path, 8, 2)
            r["generate_s"] = gen
            mem["8ch_384k"] = r
            path.unlink()
            say(f"  8 ch at 384 kHz, {wide_s:.0f} s WAV: peak RSS {r['peak_rss_mb']:.0f} MB "
                f"(after model load {r['rss_after_load_mb']:.0f} MB), RTF {r['rtf']:.1f}")
            report["peak_rss_mb_8ch_384k"] = r["peak_rss_mb"]
            report["memory"] = mem
            report["peak_rss_mb_10min"] = mem["10min"]["peak_rss_mb"]
            report["peak_rss_mb_2h"] = mem["2h"]["peak_rss_mb"]
            report["rtf_2h"] = mem["2h"]["rtf"]
    p10, p2h = report.get("peak_rss_mb_10min"), report.get("peak_rss_mb_2h")
    report["rss_ratio_2h_vs_10min"] = (p2h / p10) if p10 and p2h else None
    report["load_avg_end"] = _load()
    report["targets"] = [{"key": t.key, "label": t.label, "target": f"{t.op} {t.value:g}",
                          "value": report.get(t.key), "status": _status(t, report.get(t.key))}
                         for t in TARGETS]
    return report


def print_summary(report: dict[str, Any], say: Callable[[str], None]) -> None:
    say("")
    say(f"{'figure':<38} {'value':>10}  {'target':<9} status")
    for t in report["targets"]:
        say(f"{t['label']:<38} {_fmt(t['value']):>10}  {t['target']:<9} {t['status']}")
    say(f"{'best batch, 1 / 2 threads':<38} {report['rtf_1thread_batch']!s:>4} / "
        f"{report['rtf_2threads_batch']!s}")
    say(f"{'TFLite RTF (2 threads, batch 1)':<38} {_fmt(report['tflite_rtf']):>10}")
    say(f"{'variant':<8} {'RTF 1t b1':>16} {'RTF 1t best':>20} {'RTF 2t b1':>16} {'RTF 2t best':>20} "
        f"{'x TFLite':>8} {'cold s':>6}")
    for v in report.get("variants", {}).values():
        def cell(key: str, best: bool, v: dict[str, Any] = v) -> str:
            if key not in v or (not best and f"{key}_b1" not in v):
                return "-"
            lo, hi = v[f"{key}_range" if best else f"{key}_b1_range"]
            value = v[key] if best else v[f"{key}_b1"]
            return f"{value:.1f} [{lo:.0f}-{hi:.0f}]" + (f" b{v[f'{key}_batch']}" if best else "")
        say(f"{v['variant']:<8} {cell('rtf_1thread', False):>16} {cell('rtf_1thread', True):>20} "
            f"{cell('rtf_2threads', False):>16} {cell('rtf_2threads', True):>20} "
            f"{_fmt(v.get('speedup_vs_tflite')):>8} {_fmt(v.get('cold_start_s')):>6}")
    say(f"{'RTF of the 2-h run':<38} {_fmt(report.get('rtf_2h')):>10}")
    say(f"load average start {report['load_avg_start']} end {report['load_avg_end']} (2 cores; other work "
        "on the machine lowers every speed figure)")


def cmd_bench(args: argparse.Namespace) -> int:
    from sentinela.adapters.audio import AudioError
    from sentinela.adapters.model import ModelError
    from sentinela.domain.card import CardError

    def say(msg: str) -> None:
        print(msg, flush=True)

    try:
        report = run_bench(args, say)
    except (CardError, ModelError, AudioError, RuntimeError, OSError) as exc:
        print(f"error: bench: {exc}", file=sys.stderr)
        return 2
    print_summary(report, say)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        say(f"wrote {args.json_out}")
    if args.json:
        from sentinela_tools.output import emit_json

        emit_json(report)
    return 0


def register(subparsers: Any) -> None:
    b = subparsers.add_parser("bench", help="speed, cold start and memory of the classify path (benchmarks)")
    b.add_argument("--json", action="store_true", help="print every figure as JSON to stdout")
    b.add_argument("--json-out", metavar="PATH", help="also write every figure as JSON to this file")
    b.add_argument("--card", help="model card (default models/card.json)")
    b.add_argument("--quick", action="store_true", help="short audio, one repeat (smoke test)")
    b.add_argument("--skip-tflite", action="store_true", help="leave out the TFLite comparison")
    b.add_argument("--skip-memory", action="store_true", help="leave out the 10-min / 2-h memory runs")
    b.add_argument("--clip-seconds", type=float, help="length of the speed clip (default 90, quick 12)")
    b.add_argument("--repeats", type=int, help="timed repeats per config (default 3, quick 1)")
    b.add_argument("--variants", help="model variants to time, comma-separated (default: every variant the card "
                                      "lists; the card's own is always in)")
    b.add_argument("--tflite-model", help="TFLite file (default: the graph model's path with .tflite)")
    b.add_argument("--tflite-python",
                   help=f"python with the TFLite interpreter (default {TFLITE_VENV_PYTHON})")
    b.set_defaults(fn=cmd_bench)

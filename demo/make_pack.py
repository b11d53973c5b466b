"""Rebuild demo/audio and demo/audio/ATTRIBUTION.md from ../shared/audio (run from the repository root).

Only clips whose MANIFEST licence note allows redistribution with attribution (CC BY, CC BY-NC, CC0 or
public domain) are picked; ../shared/audio/README.md allows a pack of at most 12 clips and 3 MB. 16-bit
WAV is re-encoded to FLAC (lossless); float WAV is copied as it is (FLAC holds integers only, and these
clips peak above full scale: converting would clip them and change what the model hears); the one
stereo speech clip is mixed down to mono FLAC to fit the size.
Each clip was chosen as a clear example of its class under the head in models/ when the pack was made.

    .venv/bin/python demo/make_pack.py [--shared ../shared/audio]
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path

import soundfile as sf

# (manifest folder, file, what it shows in the demo)
PICKS = [
    ("dev", "gunshot/us8k__196400-6-0-0.wav", "gunshot"),
    ("train", "gunshot/us8k__159709-6-0-0.wav", "a second gunshot minutes later: joins the first one's incident"),
    ("dev", "chainsaw/esc10__2-68391-A.ogg", "chainsaw"),
    ("dev", "chainsaw/esc10__3-118656-A.ogg", "chainsaw that BirdNET's Engine label also hears: engine yields to it"),
    ("train", "engine/us8k__113201-5-0-0.wav", "engine"),
    ("dev", "engine/us8k__103258-5-0-15.wav", "idling engine"),
    ("train", "human_voice/fwhisper__jfk.flac", "a voice (public domain speech)"),
    ("dev", "dog/esc10__2-114280-A.ogg", "dog barking"),
    ("dev", "dog/esc10__1-30226-A.ogg", "dog barking"),
    ("dev", "background/blanket__birds_t000-020.ogg", "forest bird chorus (no alert; the biodiversity log)"),
    ("dev", "background/blanket__wind.ogg", "wind (no alert)"),
    ("dev", "background/esc10__2-117625-A.ogg", "rain (no alert)"),
]
ALLOWED = ("CC BY", "CC-BY", "CC0", "public domain", "Public Domain")
MAX_CLIPS, MAX_BYTES = 12, 3_000_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default="../shared/audio")
    ap.add_argument("--out", default="demo/audio")
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    manifests = {d: {r["file"]: r for r in csv.DictReader((shared / d / "MANIFEST.csv").open(encoding="utf-8"))}
                 for d in ("dev", "train")}
    if out.exists():
        shutil.rmtree(out)
    rows = []
    for folder, name, why in PICKS[:MAX_CLIPS]:
        m = manifests[folder][name]
        note = m["license_note"]
        if not any(a in note for a in ALLOWED) or "unknown" in note.lower() or "BY-SA" in note:
            raise SystemExit(f"{folder}/{name}: licence note does not allow redistribution: {note}")
        src = shared / folder / name
        dst = out / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        change = "unchanged copy"
        if src.suffix.lower() == ".wav" and sf.info(str(src)).subtype == "PCM_16":
            dst = dst.with_suffix(".flac")
            data, rate = sf.read(src, dtype="int16", always_2d=True)
            sf.write(dst, data, rate, format="FLAC", subtype="PCM_16")
            change = "WAV re-encoded to FLAC (lossless)"
        elif name.endswith("jfk.flac"):
            data, rate = sf.read(src, dtype="float32", always_2d=True)
            sf.write(dst, data.mean(axis=1), rate, format="FLAC", subtype="PCM_16")
            change = "stereo mixed down to mono FLAC, 16-bit"
        else:
            shutil.copyfile(src, dst)
        rows.append((dst.relative_to(out).as_posix(), why, m, change, dst.stat().st_size))
    total = sum(r[4] for r in rows)
    if total > MAX_BYTES:
        raise SystemExit(f"pack is {total} bytes, over {MAX_BYTES}")
    lines = [
        "# Demo pack: sources, authors and licences",
        "",
        f"{len(rows)} clips, {total / 1e6:.2f} MB, picked by `demo/make_pack.py` from the project's shared",
        "development recordings, only among clips whose licence allows redistribution with attribution.",
        "The clips are not Sentinela's work and are not under its Apache-2.0 licence: each keeps its own",
        "licence below. CC BY-NC clips (UrbanSound8K) are for non-commercial use only.",
        "",
        "UrbanSound8K: J. Salamon, C. Jacoby and J. P. Bello, \"A Dataset and Taxonomy for Urban Sound",
        "Research\", ACM Multimedia 2014; CC BY-NC 3.0; each clip is cut from the Freesound sound named",
        "(its author is on that page). ESC-10: K. J. Piczak, \"ESC: Dataset for Environmental Sound",
        "Classification\", ACM Multimedia 2015; each clip from the Freesound sound and author named.",
        "Blanket: sounds listed in its SOUNDS_LICENSING.md (https://github.com/rafaelmardojai/blanket).",
        "",
        "| file | what it shows | source (repository, path, commit) | licence and author | changes |",
        "|---|---|---|---|---|",
    ]
    for rel, why, m, change, _ in rows:
        src = f"https://github.com/{m['source_repo']} `{m['source_path']}` @ {m['source_commit'][:10]}"
        lines.append(f"| `{rel}` | {why} | {src} | {m['license_note']} | {change} |")
    (out / "ATTRIBUTION.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} clips, {total} bytes, and {out / 'ATTRIBUTION.md'}")


if __name__ == "__main__":
    main()

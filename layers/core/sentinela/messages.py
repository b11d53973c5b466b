"""The words rangers read: alert texts per language, kept to GSM-7 and at most two segments.

Spanish: é, ñ, ü, ¿, ¡ are GSM-7; á, í, ó, ú are not, and one of them would switch the whole text to
UCS-2 (70 characters a segment instead of 160). The templates avoid them (``vehiculo``), and names
from data (site names) have only those four letters folded to their plain vowel, deliberately: a
ranger reads "Cañete" and "Angol" the same, and the text stays one segment.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .sms import GSM7_BASIC, GSM7_EXT, segments

LANGS = ("es", "en")

THREAT_WORDS = {
    "es": {"gunshot": "DISPARO", "chainsaw": "MOTOSIERRA", "engine": "MOTOR/VEHICULO",
           "human_voice": "VOCES", "dog": "PERROS"},
    "en": {"gunshot": "GUNSHOT", "chainsaw": "CHAINSAW", "engine": "ENGINE/VEHICLE",
           "human_voice": "VOICES", "dog": "DOGS"},
}

TEMPLATES = {
    "es": ("SENTINELA {ref}: {threat} {conf}% en {site}, {time} hora local. {map}"
           "Responda 1=voy 2=falsa alarma"),
    "en": ("SENTINELA {ref}: {threat} {conf}% at {site}, {time} local time. {map}"
           "Reply 1=on my way 2=false alarm"),
}

_FOLD = str.maketrans({"á": "a", "í": "i", "ó": "o", "ú": "u", "Á": "A", "Í": "I", "Ó": "O", "Ú": "U"})


def gsm_safe(text: str) -> str:
    """Fold the few Spanish letters outside GSM-7; anything else outside it becomes '?'."""
    folded = text.translate(_FOLD)
    return "".join(c if c in GSM7_BASIC or c in GSM7_EXT else "?" for c in folded)


def local_time(iso_utc: str, tz: str | None) -> str:
    when = datetime.strptime(iso_utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    try:
        zone = ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return when.astimezone(zone).strftime("%d/%m %H:%M")


def map_link(site: dict[str, Any] | None) -> str:
    if not site or site.get("lat") is None or site.get("lon") is None:
        return ""
    return f"https://maps.google.com/?q={float(site['lat']):.5f},{float(site['lon']):.5f} "


def render_alert(alert: dict[str, Any], site: dict[str, Any] | None, lang: str, ref: str) -> str:
    lang = lang if lang in LANGS else "es"
    site_name = (site or {}).get("name") or alert.get("site_id") or "?"
    text = TEMPLATES[lang].format(
        ref=ref,
        threat=THREAT_WORDS[lang].get(alert["threat"], str(alert["threat"]).upper()),
        conf=round(float(alert["confidence"]) * 100),
        site=gsm_safe(str(site_name))[:40],
        time=local_time(alert["recorded_at"], (site or {}).get("tz")) if alert.get("recorded_at") else "?",
        map=map_link(site),
    )
    seg = segments(text)
    if seg.segments > 2:  # a very long site name: drop the map link before anything a ranger needs
        text = text.replace(map_link(site), "")
    return text

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

from sentinela.domain.alert import Alert
from sentinela.domain.phone import GSM7_BASIC, GSM7_EXT, segments
from sentinela.domain.policy import class_traits

LANGS = ("es", "en")

TEMPLATES = {
    "es": ("SENTINELA {ref}: {threat} {conf}% en {site}, {device}{time} hora local{age}. {map}"
           "Responda 1=voy 2=falsa alarma"),
    "en": ("SENTINELA {ref}: {threat} {conf}% at {site}, {device}{time} local time{age}. {map}"
           "Reply 1=on my way 2=false alarm"),
}
# The recorder that heard it (a ranger knows their recorders by name), and how old the sound is when
# the clip reached us late (a recorder that was offline uploads its backlog): past LATE_AFTER_S the
# text says so, because a ranger walks to where a poacher was, not is.
DEVICE_WORDS = {"es": "grabadora {id}, ", "en": "recorder {id}, "}
AGE_WORDS = {"es": " (grabado hace {age})", "en": " (recorded {age} ago)"}
LATE_AFTER_S = 600
DEVICE_ID_CHARS = 20

_FOLD = str.maketrans({"á": "a", "í": "i", "ó": "o", "ú": "u", "Á": "A", "Í": "I", "Ó": "O", "Ú": "U"})


def gsm_safe(text: str) -> str:
    """Fold the few Spanish letters outside GSM-7; anything else outside it becomes '?'."""
    folded = text.translate(_FOLD)
    return "".join(c if c in GSM7_BASIC or c in GSM7_EXT else "?" for c in folded)


def threat_words(threat: str, lang: str) -> str:
    """The class as the texts name it: the policy file's ``classes.<threat>.names`` (DISPARO, GUNSHOT),
    else the class name in upper case."""
    return gsm_safe(class_traits(threat).name(lang))


def local_time(iso_utc: str, tz: str | None) -> str:
    when = datetime.strptime(iso_utc, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    try:
        zone = ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return when.astimezone(zone).strftime("%d/%m %H:%M")


def map_link(site: dict[str, Any] | None, device: dict[str, Any] | None = None) -> str:
    """The recorder's point when the registry knows it (``sentinela devices add --lat --lon``), else
    the site's centre."""
    for place in (device, site):
        if place and place.get("lat") is not None and place.get("lon") is not None:
            return f"https://maps.google.com/?q={float(place['lat']):.5f},{float(place['lon']):.5f} "
    return ""


def device_words(device_id: Any, lang: str) -> str:
    return DEVICE_WORDS[_lang(lang)].format(id=gsm_safe(str(device_id))[:DEVICE_ID_CHARS]) if device_id else ""


def age_words(recorded_at: str | None, now: datetime | None, lang: str) -> str:
    """' (recorded 25 min ago)' when the sound is more than LATE_AFTER_S old at ``now``, else ''."""
    if not recorded_at or now is None:
        return ""
    try:
        when = datetime.strptime(str(recorded_at)[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return ""
    age_s = (now - when).total_seconds()
    if age_s <= LATE_AFTER_S:
        return ""
    minutes = round(age_s / 60)
    if minutes < 120:
        span = f"{minutes} min"
    elif minutes < 48 * 60:
        span = f"{round(minutes / 60)} h"
    else:
        span = f"{round(minutes / 1440)} d"
    return AGE_WORDS[_lang(lang)].format(age=span)


def render_alert(alert: Alert, site: dict[str, Any] | None, lang: str, ref: str,
                 device: dict[str, Any] | None = None, now: datetime | None = None) -> str:
    """The opening text. ``device`` is the recorder's registry item (its lat/lon, when set, place the
    map link); ``now`` is when the text goes out (a sound older than LATE_AFTER_S says how old)."""
    lang = lang if lang in LANGS else "es"
    site_name = (site or {}).get("name") or alert.site_id or "?"
    link = map_link(site, device)
    text = TEMPLATES[lang].format(
        ref=ref,
        threat=threat_words(alert.threat, lang),
        conf=round(alert.confidence * 100),
        site=gsm_safe(str(site_name))[:40],
        device=device_words(alert.device_id, lang),
        time=local_time(alert.recorded_at, (site or {}).get("tz")) if alert.recorded_at else "?",
        age=age_words(alert.recorded_at, now, lang),
        map=link,
    )
    seg = segments(text)
    if seg.segments > 2 and link:  # a very long site name: drop the map link before anything a ranger needs
        text = text.replace(link, "")
    return text


# --- incidents: updates, escalations, replies (sentinela.services.incidents) ---------------------------------
# The same rules as above: GSM-7 only (no á í ó ú in the templates: "numero", "ultima"), at most two
# segments; names from data go through gsm_safe. Audio links go in a message of their own (see
# render_audio_link), never in these.

UPDATE_TEMPLATES = {
    "es": ("SENTINELA {ref}: se sigue oyendo {threat} en {site}: {n} detecciones, ultima {time} hora local, "
           "max {conf}%. Responda 1=voy 2=falsa alarma"),
    "en": ("SENTINELA {ref}: still hearing {threat} at {site}: {n} detections, last {time} local time, "
           "max {conf}%. Reply 1=on my way 2=false alarm"),
}

ESCALATION_TEMPLATES = {
    "es": ("SENTINELA {ref}: SIN RESPUESTA tras {minutes} min. {threat} {conf}% en {site}, desde {time} "
           "hora local. {map}Responda 1=voy 2=falsa alarma"),
    "en": ("SENTINELA {ref}: NO ANSWER after {minutes} min. {threat} {conf}% at {site}, since {time} "
           "local time. {map}Reply 1=on my way 2=false alarm"),
}

REPLY_TEMPLATES = {
    "es": {
        "acknowledged": "Gracias {name}. Incidente {ref} confirmado: vas en camino. Responda 3=resuelto "
                        "2=falsa alarma",
        "already": "Incidente {ref} ya fue confirmado por {name}. Responda 3=resuelto 2=falsa alarma",
        "false_alarm": "Incidente {ref} cerrado como falsa alarma. Gracias: el audio queda marcado para "
                       "mejorar el modelo.",
        "resolved": "Incidente {ref} resuelto. Gracias {name}.",
        "help": "Sentinela, incidente {ref}: responda 1=voy 2=falsa alarma 3=resuelto",
        "no_incident": "Sentinela: no hay incidentes abiertos para este numero.",
        "unknown_number": "Sentinela: este numero no esta registrado.",
    },
    "en": {
        "acknowledged": "Thanks {name}. Incident {ref} acknowledged: you are on your way. Reply 3=resolved "
                        "2=false alarm",
        "already": "Incident {ref} was already acknowledged by {name}. Reply 3=resolved 2=false alarm",
        "false_alarm": "Incident {ref} closed as a false alarm. Thanks: the audio is labelled to improve "
                       "the model.",
        "resolved": "Incident {ref} resolved. Thanks {name}.",
        "help": "Sentinela, incident {ref}: reply 1=on my way 2=false alarm 3=resolved",
        "no_incident": "Sentinela: no open incident for this number.",
        "unknown_number": "Sentinela: this number is not registered.",
    },
}

AUDIO_TEMPLATES = {
    "es": "SENTINELA {ref}: audio ({minutes} min): {url}",
    "en": "SENTINELA {ref}: audio ({minutes} min): {url}",
}


def _lang(lang: str) -> str:
    return lang if lang in LANGS else "es"


def _fit(text: str, site: dict[str, Any] | None, device: dict[str, Any] | None = None) -> str:
    link = map_link(site, device)
    if segments(text).segments > 2 and link:  # a very long site name: the map link goes first
        text = text.replace(link, "")
    return text


def render_update(incident: dict[str, Any], alert: Alert, site: dict[str, Any] | None,
                  lang: str) -> str:
    lang = _lang(lang)
    name = (site or {}).get("name") or incident.get("site_id") or "?"
    heard = str(alert.recorded_at or incident.get("last_heard") or "")[:19] + "Z"
    text = UPDATE_TEMPLATES[lang].format(
        ref=incident["ref"], threat=threat_words(alert.threat, lang),
        site=gsm_safe(str(name))[:40], n=int(incident.get("alerts", 1)),
        time=local_time(heard, (site or {}).get("tz")),
        conf=round(max(float(incident.get("max_confidence", 0)), alert.confidence) * 100),
    )
    return _fit(text, site)


def render_escalation(incident: dict[str, Any], site: dict[str, Any] | None, lang: str, minutes: int,
                      device: dict[str, Any] | None = None) -> str:
    lang = _lang(lang)
    name = (site or {}).get("name") or incident.get("site_id") or "?"
    text = ESCALATION_TEMPLATES[lang].format(
        ref=incident["ref"], minutes=max(int(minutes), 0),
        threat=threat_words(str(incident["threat"]), lang),
        conf=round(float(incident.get("max_confidence", incident.get("confidence", 0))) * 100),
        site=gsm_safe(str(name))[:40],
        time=local_time(str(incident["first_heard"])[:19] + "Z", (site or {}).get("tz")),
        map=map_link(site, device),
    )
    return _fit(text, site, device)


def render_reply(kind: str, lang: str, ref: str = "", name: str = "") -> str:
    return gsm_safe(REPLY_TEMPLATES[_lang(lang)][kind].format(ref=ref, name=name.split(" ")[0] or "")).replace(
        " .", ".")


def render_audio_link(ref: str, url: str, lang: str, minutes: int = 60) -> str:
    """Its own message: a presigned URL runs to hundreds of characters (over a thousand with the session
    token of a Lambda role), more than the alert's two-segment budget. It is plain ASCII (GSM-7)."""
    return AUDIO_TEMPLATES[_lang(lang)].format(ref=ref, url=url, minutes=minutes)


# --- replies that name an incident, co-ranger notes, the second "2" (sentinela.services.incidents.reply) --------
NOTE_TEMPLATES = {
    "es": {
        "ack_note": "SENTINELA {ref}: {name} va en camino.",
        "confirm_false": "Incidente {ref} es un {threat}: para cerrarlo como falsa alarma responda 2 otra vez "
                         "antes de {minutes} min.",
        "closed": "Incidente {ref} ya esta cerrado ({state}): su respuesta no cambia nada.",
        "unknown_ref": "Sentinela: no hay un incidente {ref} para este numero.",
        "duplicate": "Sentinela: esta respuesta ya fue recibida.",
    },
    "en": {
        "ack_note": "SENTINELA {ref}: {name} is on the way.",
        "confirm_false": "Incident {ref} is a {threat}: to close it as a false alarm reply 2 again within "
                         "{minutes} min.",
        "closed": "Incident {ref} is already closed ({state}): your reply changes nothing.",
        "unknown_ref": "Sentinela: no incident {ref} for this number.",
        "duplicate": "Sentinela: this reply was already received.",
    },
}
STATE_WORDS = {"es": {"resolved": "resuelto", "false_alarm": "falsa alarma"},
               "en": {"resolved": "resolved", "false_alarm": "false alarm"}}


def render_note(kind: str, lang: str, ref: str = "", name: str = "", threat: str = "", state: str = "",
                minutes: int = 0) -> str:
    lang = _lang(lang)
    return gsm_safe(NOTE_TEMPLATES[lang][kind].format(
        ref=ref, name=name.split(" ")[0] or "?", minutes=minutes,
        threat=threat_words(threat, lang), state=STATE_WORDS[lang].get(state, state)))

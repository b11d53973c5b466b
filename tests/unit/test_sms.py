
import pytest

from sentinela.domain.alert import Alert
from sentinela.domain.messages import gsm_safe, render_alert
from sentinela.domain.phone import mask_phone, segments, valid_e164

ALERT = Alert(clip_id="s/d/20261128T143210Z@v1", threat="chainsaw", confidence=0.934,
         site_id="s", recorded_at="2026-11-28T14:32:10Z")
SITE = {"name": "Nahuelbuta Norte, sector Pehuén", "lat": -37.7936, "lon": -72.9911, "tz": "America/Santiago"}


def test_masking_keeps_phone_numbers_out_of_logs() -> None:
    assert mask_phone("+56912345678") == "+569*****678"
    assert "12345" not in mask_phone("+56912345678")


@pytest.mark.parametrize(("number", "ok"), [("+56912345678", True), ("56912345678", False), ("+0123", False)])
def test_e164(number: str, ok: bool) -> None:
    assert valid_e164(number) is ok


def test_segment_counting() -> None:
    assert segments("a" * 160) == segments("a" * 160)
    assert segments("a" * 160).segments == 1 and segments("a" * 161).segments == 2
    assert segments("ñ é ü ¿ ¡").encoding == "GSM-7"
    assert segments("camión").encoding == "UCS-2"  # ó is not GSM-7
    assert segments("[" * 80).units == 160


@pytest.mark.parametrize("lang", ["es", "en"])
def test_alert_text_is_gsm7_and_fits_two_segments(lang: str) -> None:
    text = render_alert(ALERT, SITE, lang, "ABC123")
    seg = segments(text)
    assert seg.encoding == "GSM-7" and seg.segments <= 2
    assert "93%" in text and "11:32" in text  # local time in Santiago (UTC-3 in November)
    assert "ABC123" in text and "maps" in text
    assert ("MOTOSIERRA" if lang == "es" else "CHAINSAW") in text


def test_site_names_are_folded_to_gsm7() -> None:
    folded = gsm_safe("Cañete, Curanilahue, Contulmo: Los Álamos, Tirúa")
    assert folded == "Cañete, Curanilahue, Contulmo: Los Alamos, Tirua"

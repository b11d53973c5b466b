"""Phone numbers and what a text costs, whatever carries it: E.164 numbers, masked numbers for logs, and
GSM-7 / UCS-2 segments (what an SMS is billed by)."""

from __future__ import annotations

import re
from dataclasses import dataclass

E164 = re.compile(r"^\+[1-9]\d{6,14}$")

# GSM 03.38 basic set + the extension table (each extension char costs two septets).
GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXT = set("^{}\\[~]|€\f")


def mask_phone(number: str) -> str:
    """Enough to tell two rangers apart in a log line, not enough to call them."""
    if len(number) <= 6:
        return "***"
    return number[:4] + "*" * (len(number) - 7) + number[-3:]


_NUMBER_IN_TEXT = re.compile(r"\+\d[\d ()-]{6,}\d|\b\d{9,15}\b")  # "+56 9 1234 5678", "56912345678"


def mask_numbers(text: str) -> str:
    """Mask every phone-like number in free text: Twilio's error messages quote the number ("The 'To'
    number +56912345678 is not a valid phone number"), and they end up in log lines and the DLQ."""
    return _NUMBER_IN_TEXT.sub(lambda m: mask_phone(re.sub(r"[ ()-]", "", m.group(0))), text)


def valid_e164(number: str) -> bool:
    return bool(E164.match(number))


@dataclass(frozen=True)
class Segments:
    encoding: str  # "GSM-7" | "UCS-2"
    units: int  # septets or UTF-16 code units
    segments: int


def segments(text: str) -> Segments:
    if all(c in GSM7_BASIC or c in GSM7_EXT for c in text):
        units = sum(2 if c in GSM7_EXT else 1 for c in text)
        return Segments("GSM-7", units, 1 if units <= 160 else -(-units // 153))
    units = len(text.encode("utf-16-le")) // 2
    return Segments("UCS-2", units, 1 if units <= 70 else -(-units // 67))

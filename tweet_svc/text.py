"""Tweet text rules (API.md): NFC, at most 140 code points, not blank, no
unassigned code points, non-characters, or control characters but newline."""

from __future__ import annotations

import unicodedata

from common.errors import InvalidArgument

MAX_CODE_POINTS = 140


def normalize_text(text: str) -> str:
    normalized = unicodedata.normalize("NFC", text)
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in normalized):
        raise InvalidArgument("tweet text must not be empty or only white space", field="text")
    if len(normalized) > MAX_CODE_POINTS:
        raise InvalidArgument(
            f"tweet text must be at most {MAX_CODE_POINTS} characters, got {len(normalized)}", field="text"
        )
    for ch in normalized:
        category = unicodedata.category(ch)
        if category == "Cc" and ch != "\n":
            raise InvalidArgument(
                f"tweet text must not contain control character U+{ord(ch):04X} (only newline is allowed)",
                field="text",
            )
        if category in ("Cn", "Cs"):
            raise InvalidArgument(
                f"tweet text must not contain unassigned or non-character code point U+{ord(ch):04X}",
                field="text",
            )
    return normalized

"""Tweet text rules (API.md): NFC, at most 140 code points, not blank (white
space and characters that render as nothing do not count as text), no
unassigned code points, non-characters, or control characters but newline."""

from __future__ import annotations

import unicodedata

from common.errors import InvalidArgument

MAX_CODE_POINTS = 140

# Letters and symbols that render as nothing, used to post "blank" text past a
# white-space check: the braille blank and the Hangul and Khmer fillers, and the
# Mongolian free variation selectors (Unicode's Default_Ignorable_Code_Point,
# which Python's unicodedata does not expose, less what the categories below cover).
INVISIBLE = frozenset("\u2800\u115f\u1160\u3164\uffa0\u17b4\u17b5\u180b\u180c\u180d\u180f")
# Format characters (zero-width space and joiners, word joiner, BOM, soft hyphen,
# tags) and marks that draw nothing of their own (a lone combining mark).
INVISIBLE_CATEGORIES = frozenset({"Cf", "Mn", "Me"})


def is_blank(text: str) -> bool:
    """Nothing a reader could see: only white space and invisible characters."""
    return all(ch.isspace() or ch in INVISIBLE or unicodedata.category(ch) in INVISIBLE_CATEGORIES for ch in text)


def normalize_text(text: str) -> str:
    normalized = unicodedata.normalize("NFC", text)
    if is_blank(normalized):
        raise InvalidArgument("tweet text must not be empty or only white space or invisible characters", field="text")
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

"""Cleaning of corpus documents before deduplication: what web text needs and the tokenizer should never see."""
from __future__ import annotations

import ftfy
import regex

FIXES = ftfy.TextFixerConfig(uncurl_quotes=False)  # quotes are text, not noise
BLANK_RUN = regex.compile(r"\n{3,}")


def clean_document(text: str) -> str:
    """ftfy's fixes (mojibake, HTML entities, control characters, NFC), spaces collapsed within each line, and
    runs of blank lines cut to one."""
    lines = (" ".join(line.split()) for line in ftfy.fix_text(text, FIXES).splitlines())
    return BLANK_RUN.sub("\n\n", "\n".join(lines)).strip()

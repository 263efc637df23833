"""Text in a charset its label does not quite name: what real mail clients write.

A mail's charset label is often narrower than what its client wrote: GB2312 for GBK,
KS C 5601 for Windows' code page 949, Shift_JIS for code page 932, ISO-8859-1 for
Windows-1252 (curly quotes, the euro sign), US-ASCII or "unknown-8bit" for UTF-8 or
Windows-1252. Decoded strictly by the label such a body fails, and a decoder that then
falls back to UTF-8 with replacement turns every non-ASCII character of it into
U+FFFD: the customer's whole message lost. So: the label, then the superset its
clients really write, then UTF-8, and only then the best of those with replacement
characters where single bytes are broken.
"""
from __future__ import annotations

import codecs

# The codec a label's mail clients really write, by the label's canonical codec name
# (``codecs.lookup``: "euc-cn" is gb2312, "ks_c_5601-1987" is euc_kr). Latin-1 and
# ASCII labels take the path of text whose label says nothing (``decode_text``).
_SUPERSET = {
    "gb2312": "gb18030", "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
# Labels that say nothing of the bytes above 0x7F.
_NO_CHARSET = frozenset({"", "unknown-8bit", "x-unknown", "unknown", "default", "8bit"})


def _codec(label: str | None) -> str | None:
    name = (label or "").strip().strip('"').lower()
    if name in _NO_CHARSET:
        return None
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def decode_text(data: bytes, label: str | None) -> str:
    """``data`` as text, by its charset ``label`` where that works, else by what such
    mail is most likely in; replacement characters only for bytes nothing decodes."""
    declared = _codec(label)
    unsaid = declared in (None, "utf-8", "ascii", "iso8859-1")
    tries = ["utf-8"] if unsaid else [declared, _SUPERSET.get(declared), "utf-8"]
    for codec in dict.fromkeys(c for c in tries if c):
        try:
            return _no_surrogates(data.decode(codec))
        except UnicodeError:
            continue
    if not unsaid:  # a legacy label: its superset, a few bytes replaced
        return _no_surrogates(data.decode(_SUPERSET.get(declared, declared), "replace"))
    # UTF-8 with a broken byte, or Windows-1252 (Latin-1's 0x80-0x9F are C1 controls,
    # never meant: Windows-1252's quotes and euro sign)? Whichever reads more of it.
    utf8 = data.decode("utf-8", "replace")
    broken = utf8.count("\ufffd")
    fine = sum(ord(c) > 127 for c in utf8) - broken
    return utf8 if fine >= broken else data.decode("cp1252", "replace")


def _no_surrogates(text: str) -> str:
    # Some codecs let lone surrogates through: not text, and no UTF-8 sink takes them.
    text.encode("utf-8")
    return text

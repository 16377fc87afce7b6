"""Product text template and content-word tokenisation, shared by every stage.

The product text template lives here (not in :mod:`pipeline.data`) so the torch- and
pandas-free search path builds exactly the same text as training did.

Content-word tokenisation is shared by the mismatch measure, the sample world and the
simulated production ranker.

Why one module: "does this query share a word with its products?" must be answered the
same way when the sample world is generated, when its README reports the mismatch share,
and when evaluation slices metrics by it. A leaf module (no pandas, no stages).
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"[a-z0-9]+")

# A small English stop-word list: function words plus shop filler that carries no product
# meaning. Kept explicit (not NLTK's) so results never depend on an optional download.
STOP_WORDS = frozenset("""
a an the and or of for to in on at by with from into onto over under up down out off
is are was were be been being am do does did have has had i me my we our you your he she
it its they them their this that these those what which who whom whose where when why how
some any all each every no not nor only own same so than too very can will just should
now s t d ll m re ve y as if then there here about against between through during before
after above below again further once both few more most other such yes
""".split())


def tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of ``text`` (punctuation splits words)."""
    return _TOKEN.findall(str(text).lower())


def content_words(text: str) -> frozenset[str]:
    """Tokens of ``text`` minus stop words: the words a lexical matcher could match on."""
    return frozenset(t for t in tokens(text) if t not in STOP_WORDS)


#: Catalog fields that make up the product text, in order.
PRODUCT_TEXT_FIELDS = ("title", "brand", "category", "attributes")


def join_product_fields(values: "tuple[object, ...] | list[object]") -> str:
    """``"{title} | {brand} | {category} | {attributes}"`` with empty/missing parts dropped.

    The title comes first because encoders truncate from the end; description is left out
    because it is long, repetitive and dilutes the short fields that queries actually match.
    """
    parts = ("" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values)
    return " | ".join(p.strip() for p in parts if p and p.strip())


def collapse_whitespace(text: str) -> str:
    """``text`` with leading/trailing whitespace dropped and every inner run made one space,
    so texts that differ only in spacing or line breaks compare equal."""
    return " ".join(str(text).split())


def text_hash(text: str) -> int:
    """Signed 64-bit hash of a product text, blind to whitespace differences.

    An index stores one per product (the text its vector was encoded from), so a searcher
    can tell a catalog whose products changed since indexing from the one the index was
    built from, whatever file format or path that catalog comes in.
    """
    import hashlib

    data = collapse_whitespace(text).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)

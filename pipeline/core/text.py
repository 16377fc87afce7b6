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
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.core.errors import ArtifactError, ShoprankError

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


#: Catalog fields that make up the product text by default, in order. Description is left
#: out by default because it is long, repetitive and dilutes the short fields that queries
#: actually match; ``--text-fields`` / ``text_fields`` in pipeline.toml choose others.
PRODUCT_TEXT_FIELDS = ("title", "brand", "category", "attributes")
#: The manifest key under which every artefact made from product text records its fields.
TEXT_FIELDS_KEY = "text_fields"


def parse_text_fields(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """The field list of ``--text-fields`` (``"title,description"``) or a TOML list; None =
    the default template. Empty or repeated names are a one-line error, because they would
    silently make a different text than the user asked for."""
    if spec is None:
        return PRODUCT_TEXT_FIELDS
    names = spec.split(",") if isinstance(spec, str) else [str(s) for s in spec]
    fields = tuple(n.strip() for n in names)
    if not fields or any(not f for f in fields):
        raise ShoprankError(f"--text-fields: expected comma-separated catalog columns, got {spec!r}")
    repeated = next((f for i, f in enumerate(fields) if f in fields[:i]), None)
    if repeated:
        raise ShoprankError(f"--text-fields: {repeated!r} is named twice")
    return fields


def recorded_text_fields(manifest: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The product text fields an artefact was made with; artefacts written before the fields
    were recorded used the default template."""
    value = (manifest or {}).get(TEXT_FIELDS_KEY)
    return tuple(value) if value else PRODUCT_TEXT_FIELDS


def fingerprint_columns(fields: Sequence[str]) -> list[str]:
    """Catalog columns whose change makes an index stale: the id and every text field."""
    return ["product_id", *fields]


def require_same_text_fields(first: Sequence[str], first_name: str,
                             second: Sequence[str], second_name: str) -> tuple[str, ...]:
    """The fields two artefacts share, or a one-line ArtifactError when they were made from
    different product text (one would score text the other never saw)."""
    a, b = tuple(first), tuple(second)
    if a != b:
        raise ArtifactError(f"{first_name} uses product text fields {','.join(a)} but {second_name} uses "
                            f"{','.join(b)}; rebuild one of them with matching --text-fields")
    return a


def join_product_fields(values: tuple[object, ...] | list[object]) -> str:
    """The chosen fields' values joined by ``" | "``, empty/missing parts dropped.

    The title comes first in the default because encoders truncate from the end.
    """
    parts = ("" if v is None or (isinstance(v, float) and v != v) else str(v) for v in values)
    return " | ".join(p.strip() for p in parts if p and p.strip())


def collapse_whitespace(text: str) -> str:
    """``text`` with leading/trailing whitespace dropped and every inner run made one space,
    so texts that differ only in spacing or line breaks compare equal."""
    return " ".join(str(text).split())


def identity_key(text: str) -> str:
    """The form in which two spellings of one product title or one query are equal: Unicode
    compatibility forms (NFKC), case and whitespace normalised. Derived product ids and
    derived query splits both key on it, so "Velvet Sofa" and " velvet  sofa" are one
    product and one query wherever the project decides identity from text."""
    import unicodedata

    return collapse_whitespace(unicodedata.normalize("NFKC", str(text)).casefold())


def text_hash(text: str) -> int:
    """Signed 64-bit hash of a product text, blind to whitespace differences.

    An index stores one per product (the text its vector was encoded from), so a searcher
    can tell a catalog whose products changed since indexing from the one the index was
    built from, whatever file format or path that catalog comes in.
    """
    import hashlib

    data = collapse_whitespace(text).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)

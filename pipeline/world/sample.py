"""The built-in sample world: a believable shop with graded relevance and simulated logs.

``generate_sample(n_products, n_queries, seed)`` returns catalog, queries, qrels,
engagement and a per-position impression log; ``write_sample(out_dir, ...)`` writes them as
Parquet plus a README with statistics. Same seed -> byte-identical files (fixed row order,
fixed dtypes, no timestamps in the Parquet metadata).

How the ranking problems of real shops are posed (vocabulary in :mod:`pipeline.world.vocab`):

* **Product types within categories**, and **look-alike accessories**: a sofa category sells
  sectionals, loveseats and futons, and also sofa covers and sofa legs whose titles carry
  the word "sofa". For a sofa query an accessory is a complement, never an answer, although
  it shares the query's words; this is where lexical and bi-encoder matching fail.
* Queries name a product type, a whole category or an accessory, realised by surface
  forms: the catalog's own noun ("exact"), an everyday synonym ("synonym"), shop slang or a
  brand nickname ("jargon"), a use case ("usecase") or a misspelling ("misspelling").
* **Attribute constraints in most queries**, some combined: colour, material, size,
  audience, brand, waterproofing, a price bound. Each is phrased literally, by a synonym or
  only implied by a use case; in the product the attribute sits sometimes in the title and
  sometimes only in the attributes, so matching it needs the whole text.
* Grades follow ESCI: exact (3) = the right type and every constraint met; substitute (2) =
  the right type with a constraint missed, or a close type with every constraint met;
  complement (1) = an accessory, a companion product, or a close type that misses;
  irrelevant (0). The judged pool holds the exact, substitute and complement products
  (capped) plus irrelevant ones. As in ESCI, whose pools are what a production search
  returned, most judged irrelevants are **look-alikes**: products sharing the query's words
  (a colour, a material, a brand, the noun of another category) but of the wrong kind, so
  the simulated production ranker shows them and users skip them. The rest are random.
* The split is by query *text* into train/valid/test, plus an ``unseen`` split: the queries
  about held-out product types and categories, never asked in train or valid. It stands in
  for a user's own shop.
* Engagement comes from :func:`pipeline.world.simulate.simulate_engagement` (imperfect
  production ranker + position-biased user with a click/cart/purchase funnel); the
  per-position impressions it simulated are kept for checking position-bias estimates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.world import vocab as V
from pipeline.config import POSITIONS_FILE
from pipeline.data import SPLIT_SHARES, product_text, write_parquet
from pipeline.core.text import content_words
from pipeline.world.simulate import UserModel, examination_propensity, funnel_rates, simulate_engagement
from pipeline.core.runtime import DEFAULT_SEED

UNSEEN_SPLIT = "unseen"
SURFACE_WEIGHTS = (("exact", 0.30), ("synonym", 0.24), ("jargon", 0.16), ("usecase", 0.14), ("misspelling", 0.16))
# What a non-jargon, non-usecase query names.
LEVEL_WEIGHTS = (("type", 0.70), ("category", 0.15), ("accessory", 0.15))
CONSTRAINT_COUNT_WEIGHTS = (0.30, 0.47, 0.23)        # queries with 0, 1, 2 constraints (before redraws)
ATTRIBUTE_WEIGHTS = {"colour": 3.0, "material": 2.0, "size": 1.0, "audience": 2.0, "brand": 1.0,
                     "waterproof": 2.0, "price": 2.0}
PHRASE_MODE_WEIGHTS = (("literal", 0.45), ("synonym", 0.35), ("implied", 0.20))
ACCESSORY_SHARE = 0.25
# Judged pool caps per query (keeps qrels bounded for very large catalogs).
POOL_CAPS = {3: 500, 2: 300, 1: 100}
NEGATIVES_PER_QUERY = 40
# Of those, at most this many are look-alikes (irrelevant products sharing the most query
# words); random irrelevant products fill the rest.
LOOKALIKES_PER_QUERY = 25
PRICE_STEPS = (10, 15, 20, 25, 30, 40, 50, 60, 75, 100, 120, 150, 200, 250, 300, 400, 500, 600, 800, 1000, 1200, 1500)


@dataclass
class SampleWorld:
    """The frames of the sample world (``positions``: impressions per shown position)."""

    catalog: pd.DataFrame
    queries: pd.DataFrame
    qrels: pd.DataFrame
    engagement: pd.DataFrame
    positions: pd.DataFrame = field(default_factory=pd.DataFrame)
    extra_stats: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- catalog
_TYPE_OFFSET = np.cumsum([0] + [len(c.types) for c in V.CATEGORIES])
_ACC_OFFSET = np.cumsum([0] + [len(c.accessories) for c in V.CATEGORIES])
_AUDIENCES = {"": ("",), "kids": ("adult", "kids"), "gender": ("men", "women", "kids")}
_AUDIENCE_P = {"": (1.0,), "kids": (0.7, 0.3), "gender": (0.4, 0.4, 0.2)}


def _brand_table(rng: np.random.Generator) -> list[list[int]]:
    """Brands sold in each category (each brand spans several categories)."""
    return [sorted(rng.choice(len(V.BRANDS), V.BRANDS_PER_CATEGORY, replace=False).tolist())
            for _ in V.CATEGORIES]


def _main_title(rng: np.random.Generator, brand: str, noun: str, col: str, mat: str, size: str,
                audience: str, waterproof: bool) -> str:
    """A main product's title: some attributes shown, the rest left to the attributes field."""
    words = [brand]
    if audience in V.AUDIENCE_TITLE and rng.random() < 0.6:
        words.append(V.AUDIENCE_TITLE[audience])
    if waterproof and rng.random() < 0.6:
        words.append("Waterproof")
    if size != "medium" and rng.random() < 0.3:
        words.append(size.title())
    if mat.lower() not in noun.lower() and rng.random() < 0.5:
        words.append(mat.title())
    words.append(noun)
    title = " ".join(words)
    return f"{title} - {col.title()}" if rng.random() < 0.6 else title


def generate_catalog(n_products: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Main products and accessories with titles, attributes, prices, ratings; plus index arrays."""
    n_cat = len(V.CATEGORIES)
    brands_of = _brand_table(rng)
    cat = np.arange(n_products) % n_cat
    rng.shuffle(cat)
    is_acc = rng.random(n_products) < ACCESSORY_SHARE
    unit = rng.random(n_products)
    n_types = np.diff(_TYPE_OFFSET)[cat]
    n_accs = np.diff(_ACC_OFFSET)[cat]
    # global type / accessory ids (-1 where the product is the other kind)
    ptype = np.where(is_acc, -1, _TYPE_OFFSET[cat] + (unit * n_types).astype(np.int64))
    acc = np.where(is_acc, _ACC_OFFSET[cat] + (unit * n_accs).astype(np.int64), -1)
    colour = rng.integers(0, len(V.COLOURS), n_products)
    size = rng.integers(0, len(V.SIZES), n_products)
    mat = rng.integers(0, 3, n_products)
    brand_slot = rng.integers(0, V.BRANDS_PER_CATEGORY, n_products)
    brand = np.array([brands_of[c][b] for c, b in zip(cat, brand_slot)], dtype=np.int64)
    has_wp = np.array([c.waterproof for c in V.CATEGORIES])[cat]
    waterproof = has_wp & ~is_acc & (rng.random(n_products) < 0.45)
    aud_u = rng.random(n_products)
    audience = np.empty(n_products, dtype=object)
    for i in range(n_products):
        kind = "" if is_acc[i] else V.CATEGORIES[cat[i]].audience
        audience[i] = _AUDIENCES[kind][int(np.searchsorted(np.cumsum(_AUDIENCE_P[kind]), aud_u[i], side="right").clip(0, len(_AUDIENCES[kind]) - 1))]
    type_price = np.array([t.price for c in V.CATEGORIES for t in c.types])
    base = np.array([c.price for c in V.CATEGORIES])[cat]
    mult = np.where(is_acc, 0.12, type_price[np.maximum(ptype, 0)])
    price = base * mult * np.exp(rng.normal(0.0, 0.35, n_products)) * np.where(audience == "kids", 0.7, 1.0)
    price = np.round(np.maximum(price, 2.0), 2)
    rating = np.round(np.clip(rng.normal(4.1, 0.55, n_products), 1.0, 5.0), 1)
    popularity = np.round(rng.normal(0.0, 1.0, n_products) + 0.6 * (rating - 4.1), 4)

    type_nouns = [t.noun for c in V.CATEGORIES for t in c.types]
    acc_nouns = [a for c in V.CATEGORIES for a in c.accessories]
    titles, descs, attrs = [], [], []
    for i in range(n_products):
        c = V.CATEGORIES[cat[i]]
        m = c.materials[mat[i]]
        b = V.BRANDS[brand[i]][0]
        col = V.COLOURS[colour[i]]
        sz = V.SIZES[size[i]]
        parts = [f"colour: {col}", f"material: {m}", f"size: {sz}"]
        if is_acc[i]:
            noun = acc_nouns[acc[i]]
            title = f"{b} {m.title()} {noun}" if rng.random() < 0.4 else f"{b} {noun}"
            titles.append(f"{title} - {col.title()}" if rng.random() < 0.5 else title)
            descs.append(f"{noun} by {b}, made of {m}. Fits most {c.label.lower()}. "
                         f"Rated {rating[i]:.1f} out of 5.")
        else:
            noun = type_nouns[ptype[i]]
            titles.append(_main_title(rng, b, noun, col, m, sz, audience[i], bool(waterproof[i])))
            if c.waterproof:
                parts.append(f"waterproof: {'yes' if waterproof[i] else 'no'}")
            if c.audience:
                parts.append(f"audience: {audience[i]}")
            descs.append(f"{noun} by {b}, made of {m}. Size {sz}, finished in {col}. "
                         f"Rated {rating[i]:.1f} out of 5.")
        attrs.append("; ".join(parts))
    catalog = pd.DataFrame({
        "product_id": [f"P{i:06d}" for i in range(n_products)],
        "title": titles,
        "description": descs,
        "brand": [V.BRANDS[b][0] for b in brand],
        "category": [V.CATEGORIES[c].label for c in cat],
        "attributes": attrs,
        "price": price.astype(np.float64),
        "rating": rating.astype(np.float64),
        "popularity": popularity.astype(np.float64),
    })
    index = {"cat": cat, "type": ptype, "acc": acc, "is_acc": is_acc, "colour": colour, "size": size,
             "material": mat, "brand": brand, "waterproof": waterproof, "audience": audience.astype(str),
             "price": price}
    return catalog, index


# ----------------------------------------------------------------------------- queries
def misspell(word: str, rng: np.random.Generator) -> str:
    """A plausible typo of every word of 4+ letters (drop, double, swap or vowel change)."""
    out = []
    for w in word.split():
        if len(w) < 4 or not w.isalpha():
            out.append(w)
            continue
        for _ in range(5):
            op = int(rng.integers(0, 4))
            i = int(rng.integers(1, len(w) - 1))
            if op == 0:
                typo = w[:i] + w[i + 1:]
            elif op == 1:
                typo = w[:i] + w[i] + w[i:]
            elif op == 2:
                typo = w[:i - 1] + w[i] + w[i - 1] + w[i + 1:]
            else:
                vowels = "aeiou"
                typo = w[:i] + vowels[int(rng.integers(0, 5))] + w[i + 1:]
            if typo != w:
                break
        out.append(typo)
    return " ".join(out)


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(0, len(seq)))]


def _weighted(rng: np.random.Generator, table) -> str:
    names = [n for n, _ in table]
    weights = np.array([w for _, w in table], dtype=np.float64)
    return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def _nice_price(value: float) -> int:
    """The largest round price step not above ``value`` (shoppers say "under $50")."""
    steps = [s for s in PRICE_STEPS if s <= value]
    return steps[-1] if steps else PRICE_STEPS[0]


def _head(rng: np.random.Generator, c_idx: int, surface: str, brands_in_cat: list[int]) -> tuple[str, dict]:
    """The query's head phrase and what it targets (level, type, accessory, brand)."""
    c = V.CATEGORIES[c_idx]
    target = {"level": "category", "type": -1, "acc": -1, "brand": -1}
    if surface == "jargon":
        if rng.random() < 0.35:   # brand nickname + a catalog noun or synonym
            b = _pick(rng, brands_in_cat)
            target["brand"] = b
            return f"{V.BRANDS[b][1]} {_pick(rng, c.synonyms + (c.nouns[0].lower(),))}", target
        return _pick(rng, c.jargon), target
    if surface == "usecase":
        head = _pick(rng, c.usecases)
        if not head.startswith(("something", "somewhere")) and rng.random() < 0.5:
            head = f"something for {head}" if rng.random() < 0.5 else f"{head} ideas"
        return head, target
    level = _weighted(rng, LEVEL_WEIGHTS)
    if level == "type":
        t = int(rng.integers(0, len(c.types)))
        target.update(level="type", type=int(_TYPE_OFFSET[c_idx] + t))
        words = (c.types[t].noun.lower(),) if surface == "exact" else c.types[t].synonyms
        if surface == "misspelling":
            words = (c.types[t].noun.lower(),) + c.types[t].synonyms
    elif level == "accessory":
        a = int(rng.integers(0, len(c.accessories)))
        target.update(level="accessory", acc=int(_ACC_OFFSET[c_idx] + a))
        words = (c.accessories[a].lower(),)
    else:
        words = tuple(n.lower() for n in c.nouns) if surface == "exact" else c.synonyms
        if surface == "misspelling":
            words = tuple(n.lower() for n in c.nouns) + c.synonyms
    head = _pick(rng, words)
    return (misspell(head, rng) if surface == "misspelling" else head), target


def _constraint(rng: np.random.Generator, attr: str, c_idx: int, target: dict, brands_in_cat: list[int],
                type_median: dict[int, float]) -> tuple[object, str]:
    """A value for ``attr`` and its phrase (literal, synonym or implied by a use case)."""
    c = V.CATEGORIES[c_idx]
    mode = _weighted(rng, PHRASE_MODE_WEIGHTS)
    if attr == "colour":
        col = int(rng.integers(0, len(V.COLOURS)))
        name = V.COLOURS[col]
        return col, name if mode == "literal" else _pick(rng, V.COLOUR_SYNONYMS[name])
    if attr == "material":
        m = int(rng.integers(0, len(c.materials)))
        return m, c.materials[m]
    if attr == "size":
        name = _pick(rng, tuple(V.SIZE_PHRASES))
        literal, synonyms, implied = V.SIZE_PHRASES[name]
        return V.SIZES.index(name), _pick(rng, {"literal": literal, "synonym": synonyms, "implied": implied}[mode])
    if attr == "audience":
        options = [a for a in _AUDIENCES[c.audience] if a in V.AUDIENCE_PHRASES]
        name = _pick(rng, options)
        literal, synonyms, implied = V.AUDIENCE_PHRASES[name]
        return name, _pick(rng, {"literal": literal, "synonym": synonyms, "implied": implied}[mode])
    if attr == "brand":
        b = _pick(rng, brands_in_cat)
        return b, V.BRANDS[b][0].lower() if mode != "synonym" else V.BRANDS[b][1]
    if attr == "waterproof":
        return True, _pick(rng, {"literal": V.WATERPROOF_PHRASES, "synonym": V.WATERPROOF_SYNONYMS,
                                 "implied": V.WATERPROOF_IMPLIED}[mode])
    key = target["type"] if target["level"] == "type" else (-1 - target["acc"] if target["level"] == "accessory" else -1000 - c_idx)
    bound = _nice_price(0.8 * type_median[key])
    phrase = {"literal": f"under ${bound}", "synonym": _pick(rng, V.PRICE_PHRASES),
              "implied": _pick(rng, V.PRICE_IMPLIED)}[mode]
    return float(bound), phrase


def _one_query(rng: np.random.Generator, brands_of: list[list[int]], type_median: dict[int, float]) -> dict:
    """Draw one intent and realise it as text. Returns the text and its constraints."""
    c_idx = int(rng.integers(0, len(V.CATEGORIES)))
    c = V.CATEGORIES[c_idx]
    brands_in_cat = brands_of[c_idx]
    surface = _weighted(rng, SURFACE_WEIGHTS)
    head, target = _head(rng, c_idx, surface, brands_in_cat)
    available = ["colour", "material", "brand", "price"]
    if target["level"] != "accessory":
        available += ["size"] + (["audience"] if c.audience else []) + (["waterproof"] if c.waterproof else [])
    if target["brand"] >= 0:
        available.remove("brand")
    n = int(rng.choice(3, p=CONSTRAINT_COUNT_WEIGHTS))
    weights = np.array([ATTRIBUTE_WEIGHTS[a] for a in available])
    attrs = [available[i] for i in sorted(rng.choice(len(available), size=n, replace=False, p=weights / weights.sum()))]
    constraint: dict = {"cat": c_idx, **target, "colour": -1, "material": -1, "size": -1, "audience": "",
                        "waterproof": False, "max_price": 0.0}
    pre, post = [], []
    for attr in attrs:
        value, phrase = _constraint(rng, attr, c_idx, target, brands_in_cat, type_median)
        constraint[{"price": "max_price"}.get(attr, attr)] = value
        (post if phrase.startswith(("for ", "under ", "on a ")) else pre).append(phrase)
    if rng.random() < 0.06:
        pre.insert(0, "best")
    text = " ".join([*pre, head, *post])
    held_out = c.key in V.UNSEEN_CATEGORIES or (
        target["level"] == "type" and _TYPE_NOUNS[target["type"]] in V.UNSEEN_TYPES)
    return {"query": text, "intent": surface, "category": c.label, "level": target["level"],
            "product_type": _TYPE_NOUNS[target["type"]] if target["level"] == "type" else "",
            "n_constraints": len(attrs), "held_out": held_out, **constraint}


_TYPE_NOUNS = [t.noun for c in V.CATEGORIES for t in c.types]


def _type_medians(index: dict[str, np.ndarray]) -> dict[int, float]:
    """Median price per product type (key >= 0), accessory (-1 - id) and category (-1000 - id)."""
    out: dict[int, float] = {}
    price = index["price"]
    for key, ids in (("type", index["type"]), ("acc", index["acc"])):
        for value in np.unique(ids[ids >= 0]):
            out[int(value) if key == "type" else -1 - int(value)] = float(np.median(price[ids == value]))
    for c in range(len(V.CATEGORIES)):
        sel = (index["cat"] == c) & ~index["is_acc"]
        out[-1000 - c] = float(np.median(price[sel])) if sel.any() else V.CATEGORIES[c].price
    n_types, n_accs = int(_TYPE_OFFSET[-1]), int(_ACC_OFFSET[-1])
    for t in range(n_types):   # types absent from a tiny catalog: their category's median
        out.setdefault(t, out[-1000 - int(np.searchsorted(_TYPE_OFFSET, t, side="right") - 1)])
    for a in range(n_accs):
        out.setdefault(-1 - a, 0.12 * out[-1000 - int(np.searchsorted(_ACC_OFFSET, a, side="right") - 1)])
    return out


def generate_queries(n_queries: int, rng: np.random.Generator, brands_of: list[list[int]],
                     index: dict[str, np.ndarray], relations: tuple[list[np.ndarray], list[np.ndarray]]) -> pd.DataFrame:
    """Unique query texts with at least one exact product, their constraints and a split."""
    type_median = _type_medians(index)
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n_queries:
        attempts += 1
        if attempts > n_queries * 200:
            raise ValueError(f"cannot generate {n_queries} distinct queries from the sample vocabulary")
        row = _one_query(rng, brands_of, type_median)
        if row["query"] in seen:
            continue
        if not (grade_products(row, index, *relations) == 3).any():
            continue                       # nobody would type a query the shop cannot answer... and log it
        seen.add(row["query"])
        rows.append(row)
    queries = pd.DataFrame(rows)
    u = rng.random(len(queries))
    bounds = np.cumsum([s for _, s in SPLIT_SHARES])
    split = np.array([name for name, _ in SPLIT_SHARES])[np.searchsorted(bounds, u, side="right").clip(0, 2)]
    queries["split"] = np.where(queries["held_out"].to_numpy(), UNSEEN_SPLIT, split)
    queries.insert(0, "query_id", [f"q{i:05d}" for i in range(len(queries))])
    return queries


# ----------------------------------------------------------------------------- qrels
def _relations() -> tuple[list[np.ndarray], list[np.ndarray]]:
    key = {c.key: i for i, c in enumerate(V.CATEGORIES)}
    close = [np.array([key[k] for k in c.close], dtype=np.int64) for c in V.CATEGORIES]
    comp = [np.array([key[k] for k in c.complements], dtype=np.int64) for c in V.CATEGORIES]
    return close, comp


def constraint_misses(q: dict, index: dict[str, np.ndarray]) -> np.ndarray:
    """Per product, how many of the query's stated constraints it fails."""
    miss = np.zeros(len(index["cat"]), np.int64)
    for attr in ("colour", "material", "size", "brand"):
        if q[attr] >= 0:
            miss += index[attr] != q[attr]
    if q["audience"]:
        miss += index["audience"] != q["audience"]
    if q["waterproof"]:
        miss += ~index["waterproof"]
    if q["max_price"] > 0:
        miss += index["price"] > q["max_price"]
    return miss


def grade_products(q: dict, index: dict[str, np.ndarray], close: list[np.ndarray],
                   comp: list[np.ndarray]) -> np.ndarray:
    """ESCI grades 0..3 of every product for one query intent (vectorised)."""
    c = q["cat"]
    main = ~index["is_acc"]
    in_cat = index["cat"] == c
    if q["level"] == "type":
        right = main & (index["type"] == q["type"])
        near = main & in_cat & ~right
        companion = (index["is_acc"] & in_cat) | (main & np.isin(index["cat"], comp[c]))
    elif q["level"] == "accessory":
        right = index["acc"] == q["acc"]
        near = index["is_acc"] & in_cat & ~right
        companion = main & in_cat
    else:
        right = main & in_cat
        near = main & np.isin(index["cat"], close[c])
        companion = (index["is_acc"] & in_cat) | (main & np.isin(index["cat"], comp[c]))
    ok = constraint_misses(q, index) == 0
    grade = np.zeros(len(main), np.int64)
    grade[companion | (near & ~ok)] = 1
    grade[(right & ~ok) | (near & ok)] = 2
    grade[right & ok] = 3
    return grade


class _WordIndex:
    """Which products contain which content words (expanded like the production ranker's
    synonym table), to find each query's lexical look-alikes without a quadratic scan."""

    def __init__(self, catalog: pd.DataFrame, synonyms: dict[str, tuple[str, ...]]) -> None:
        postings: dict[str, list[int]] = {}
        for row, text in enumerate(product_text(catalog)):
            for word in content_words(text):
                postings.setdefault(word, []).append(row)
        self.postings = {w: np.asarray(rows, np.int64) for w, rows in postings.items()}
        self.synonyms = synonyms
        self.n = len(catalog)

    def overlap(self, query: str) -> np.ndarray:
        """Per product, how many of the query's content words (or their synonyms) it holds."""
        counts = np.zeros(self.n, np.int64)
        for word in content_words(query):
            rows = [self.postings.get(w) for w in (word, *self.synonyms.get(word, ()))]
            rows = [r for r in rows if r is not None]
            if rows:
                counts[np.unique(np.concatenate(rows))] += 1
        return counts


def _irrelevant_pool(grade: np.ndarray, overlap: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Judged irrelevant products of one query: the look-alikes sharing the most query words
    (ties broken at random), then random irrelevant products up to the per-query count."""
    zero = np.flatnonzero(grade == 0)
    alike = zero[overlap[zero] > 0]
    order = np.lexsort((rng.random(len(alike)), -overlap[alike]))
    alike = alike[order[:LOOKALIKES_PER_QUERY]]
    rest = np.setdiff1d(zero, alike)
    fill = rng.choice(rest, min(NEGATIVES_PER_QUERY - len(alike), len(rest)), replace=False)
    return np.sort(np.concatenate([alike, fill]))


def generate_qrels(queries: pd.DataFrame, catalog: pd.DataFrame, index: dict[str, np.ndarray],
                   rng: np.random.Generator, relations: tuple[list[np.ndarray], list[np.ndarray]]) -> pd.DataFrame:
    """Judged pool per query: exact, substitute and complement products (capped), look-alike
    irrelevant products and random irrelevant ones."""
    ids = catalog["product_id"].to_numpy()
    words = _WordIndex(catalog, V.production_synonyms())
    q_parts, p_parts, g_parts = [], [], []
    for q in queries.to_dict("records"):
        grade = grade_products(q, index, *relations)
        chosen = []
        for g, cap in POOL_CAPS.items():
            idx = np.flatnonzero(grade == g)
            if len(idx) > cap:
                idx = np.sort(rng.choice(idx, cap, replace=False))
            chosen.append(idx)
        chosen.append(_irrelevant_pool(grade, words.overlap(q["query"]), rng))
        sel = np.concatenate(chosen)
        q_parts.append(np.full(len(sel), q["query"], dtype=object))
        p_parts.append(ids[sel])
        g_parts.append(grade[sel])
    qrels = pd.DataFrame({"query": np.concatenate(q_parts), "product_id": np.concatenate(p_parts),
                          "relevance": np.concatenate(g_parts).astype(np.int64)})
    return qrels.sort_values(["query", "product_id"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- world
def _lookalike_share(queries: pd.DataFrame, catalog: pd.DataFrame, index: dict[str, np.ndarray], k: int = 10) -> float:
    """Share of main-product queries whose BM25 top ``k`` holds an accessory of their category."""
    from retrieval.lexical import BM25Retriever

    main_q = queries[queries["level"] != "accessory"]
    if main_q.empty:
        return 0.0
    ids, _ = BM25Retriever(catalog).search(main_q["query"].tolist(), k=k)
    row_of = {p: i for i, p in enumerate(catalog["product_id"])}
    hits = 0
    for c_idx, top in zip(main_q["cat"], ids):
        rows = [row_of[p] for p in top]
        hits += bool(np.any(index["is_acc"][rows] & (index["cat"][rows] == c_idx)))
    return hits / len(main_q)


def generate_sample(n_products: int = 5000, n_queries: int = 1000, seed: int = DEFAULT_SEED) -> SampleWorld:
    """Build the whole sample world in memory (deterministic for a seed)."""
    if n_products < 4 * len(V.CATEGORIES):
        raise ValueError(f"--products must be at least {4 * len(V.CATEGORIES)} (4 per category)")
    if n_queries < 10:
        raise ValueError("--queries must be at least 10")
    rng = np.random.default_rng(seed)
    catalog, index = generate_catalog(n_products, rng)
    relations = _relations()
    brands_of = [sorted(set(index["brand"][index["cat"] == c].tolist())) or [0] for c in range(len(V.CATEGORIES))]
    queries = generate_queries(n_queries, rng, brands_of, index, relations)
    qrels = generate_qrels(queries, catalog, index, rng, relations)
    model = UserModel(synonyms=V.production_synonyms())
    engagement, positions = simulate_engagement(qrels, catalog, seed=seed, model=model, return_positions=True)
    extra = {"bm25_top10_lookalike_share": _lookalike_share(queries, catalog, index)}
    # popularity is a latent of the simulation (what the shop's users like), not a product field
    catalog = catalog.drop(columns=["popularity"])
    queries_out = queries[["query_id", "query", "split", "intent", "category", "level", "product_type", "n_constraints"]]
    queries_out = queries_out.astype({"n_constraints": np.int64}).reset_index(drop=True)
    return SampleWorld(catalog=catalog, queries=queries_out, qrels=qrels, engagement=engagement,
                       positions=positions, extra_stats=extra)


def _per_query(qrels: pd.DataFrame, queries: pd.Series, grade: int) -> pd.Series:
    return qrels[qrels["relevance"] == grade].groupby("query").size().reindex(queries).fillna(0)


def _irrelevant_impression_share(world: SampleWorld) -> float:
    """Share of logged impressions on judged-irrelevant products: how much of what the shop
    showed its users was wrong (real logs are far from all relevant)."""
    shown = world.engagement.merge(world.qrels, on=["query", "product_id"], how="left")
    total = float(shown["impressions"].sum()) or 1.0
    return float(shown.loc[shown["relevance"].fillna(0) == 0, "impressions"].sum() / total)


def sample_stats(world: SampleWorld) -> dict:
    """Statistics reported in the README and by the CLI."""
    from pipeline.data import vocabulary_mismatch_queries

    mismatch = vocabulary_mismatch_queries(world.queries, world.qrels, world.catalog)
    q = world.queries
    stats: dict = {
        "products": int(len(world.catalog)),
        "categories": int(world.catalog["category"].nunique()),
        "brands": int(world.catalog["brand"].nunique()),
        "queries": int(len(q)),
        **{f"queries_{s}": int((q["split"] == s).sum()) for s in [*(n for n, _ in SPLIT_SHARES), UNSEEN_SPLIT]},
        "qrels": int(len(world.qrels)),
    }
    for grade, name in ((3, "exact"), (2, "substitute"), (1, "complement")):
        counts = _per_query(world.qrels, q["query"], grade)
        stats[f"{name}_per_query_median"] = float(counts.median())
        stats[f"{name}_per_query_p90"] = float(counts.quantile(0.9))
    n_con = q["n_constraints"].to_numpy()
    stats.update({
        "constraints_0_share": float(np.mean(n_con == 0)),
        "constraints_1_share": float(np.mean(n_con == 1)),
        "constraints_2plus_share": float(np.mean(n_con >= 2)),
        "mismatch_queries": len(mismatch),
        "mismatch_share": len(mismatch) / max(1, len(q)),
        **{k: float(v) for k, v in world.extra_stats.items()},
        "engagement_rows": int(len(world.engagement)),
        "irrelevant_impression_share": _irrelevant_impression_share(world),
        **funnel_rates(world.engagement),
    })
    by_intent = q.assign(mm=q["query"].isin(mismatch)).groupby("intent")["mm"].agg(["size", "mean"])
    stats["by_intent"] = {k: {"queries": int(r["size"]), "mismatch_share": float(r["mean"])} for k, r in by_intent.iterrows()}
    return stats


def _readme(stats: dict, seed: int) -> str:
    model = UserModel()
    lines = [
        "# shoprank sample world",
        "",
        f"Generated by `pipeline sample-data` (seed {seed}). Synthetic shop: a catalog of product types",
        "and look-alike accessories; queries with a train/valid/test split by query text and an `unseen`",
        "split (queries about product types and categories never asked in train or valid); ESCI grades",
        "(3 exact, 2 substitute, 1 complement, 0 irrelevant); engagement simulated by a position-biased",
        "user over an imperfect production ranker (`pipeline/world/simulate.py`). `positions.parquet` holds the",
        "impressions and clicks per shown position, for checking position-bias estimates.",
        "",
        "| statistic | value |",
        "|---|---|",
    ]
    for key, value in stats.items():
        if key == "by_intent":
            continue
        lines.append(f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |")
    lines += ["", "Vocabulary mismatch (query shares no content word with any grade >= 2 product) by query type:", "",
              "| intent | queries | mismatch share |", "|---|---|---|"]
    for intent, row in stats["by_intent"].items():
        lines.append(f"| {intent} | {row['queries']} | {row['mismatch_share']:.3f} |")
    lines += ["", f"Examination propensity the simulated user applied per position (1 / position ** {model.examine_power}):", "",
              "| position | propensity |", "|---|---|"]
    for pos, value in enumerate(examination_propensity(model), start=1):
        lines.append(f"| {pos} | {value:.4f} |")
    return "\n".join(lines) + "\n"


def write_sample(out_dir: str | Path, n_products: int = 5000, n_queries: int = 1000, seed: int = DEFAULT_SEED) -> dict:
    """Generate the sample world and write it (atomically) to ``out_dir``; return stats."""
    from pipeline.core.artifacts import atomic_directory

    started = time.perf_counter()
    world = generate_sample(n_products, n_queries, seed)
    stats = sample_stats(world)
    with atomic_directory(out_dir) as tmp:
        write_parquet(world.catalog, tmp / "catalog.parquet")
        write_parquet(world.engagement, tmp / "engagement.parquet")
        write_parquet(world.queries, tmp / "queries.parquet")
        write_parquet(world.qrels, tmp / "qrels.parquet")
        write_parquet(world.positions, tmp / POSITIONS_FILE)
        (tmp / "README.md").write_text(_readme(stats, seed), encoding="utf-8")
    stats["seconds"] = round(time.perf_counter() - started, 2)
    stats["out_dir"] = str(out_dir)
    return stats

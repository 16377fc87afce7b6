"""The built-in sample world: a believable shop with graded relevance and simulated logs.

``generate_sample(n_products, n_queries, seed)`` returns catalog, queries, qrels and
engagement frames; ``write_sample(out_dir, ...)`` writes them as Parquet plus a README
with statistics. Same seed -> byte-identical files (fixed row order, fixed dtypes, no
timestamps in the Parquet metadata).

How the ranking problem is made real (vocabulary in :mod:`pipeline.sample_vocab`):
* Queries are realised from *intents* (category x optional attribute/brand constraint) by
  surface forms: the catalog's own noun ("exact"), an everyday synonym ("synonym", a
  pretrained encoder relates it), shop slang or a brand nickname ("jargon", only logs can
  teach it), a use case ("usecase") or a misspelling ("misspelling"). Attribute
  constraints are phrased literally or by a synonym ("gray", "for toddlers").
* The split is by query *text*; the same intents and words recur across splits, so what
  a model learns from train engagement transfers to test.
* Grades (ESCI-like): right category and all constraints met = 3; right category with a
  constraint missed, or a close substitute category = 2; complement category = 1; else 0.
* Engagement comes from :func:`pipeline.simulate.simulate_engagement` (imperfect
  production ranker + position-biased user with a click/cart/purchase funnel).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import sample_vocab as V
from pipeline.data import write_parquet
from pipeline.simulate import UserModel, funnel_rates, simulate_engagement

SPLIT_SHARES = (("train", 0.7), ("valid", 0.15), ("test", 0.15))
SURFACE_WEIGHTS = (("exact", 0.28), ("synonym", 0.20), ("jargon", 0.20), ("usecase", 0.16), ("misspelling", 0.16))
# Judged pool caps per query (keeps qrels bounded for very large catalogs; at the default
# size every relevant product of a query is judged).
POOL_CAPS = {3: 500, 2: 500, 1: 80}
NEGATIVES_PER_QUERY = 40


@dataclass
class SampleWorld:
    """The four frames of the sample world."""

    catalog: pd.DataFrame
    queries: pd.DataFrame
    qrels: pd.DataFrame
    engagement: pd.DataFrame


# ----------------------------------------------------------------------------- catalog
def _brand_table(rng: np.random.Generator) -> list[list[int]]:
    """Brands sold in each category (each brand spans several categories)."""
    return [sorted(rng.choice(len(V.BRANDS), V.BRANDS_PER_CATEGORY, replace=False).tolist())
            for _ in V.CATEGORIES]


def generate_catalog(n_products: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Products with titles, descriptions, attributes, prices, ratings; also index arrays."""
    n_cat = len(V.CATEGORIES)
    brands_of = _brand_table(rng)
    cat = np.arange(n_products) % n_cat
    rng.shuffle(cat)
    colour = rng.integers(0, len(V.COLOURS), n_products)
    size = rng.integers(0, len(V.SIZES), n_products)
    mat = rng.integers(0, 3, n_products)
    noun = rng.integers(0, 2, n_products)
    brand_slot = rng.integers(0, V.BRANDS_PER_CATEGORY, n_products)
    brand = np.array([brands_of[c][b] for c, b in zip(cat, brand_slot)], dtype=np.int64)
    has_wp = np.array([V.CATEGORIES[c].waterproof for c in range(n_cat)])[cat]
    has_kids = np.array([V.CATEGORIES[c].kids for c in range(n_cat)])[cat]
    waterproof = has_wp & (rng.random(n_products) < 0.45)
    kids = has_kids & (rng.random(n_products) < 0.3)
    base = np.array([c.price for c in V.CATEGORIES])[cat]
    price = np.round(base * np.exp(rng.normal(0.0, 0.45, n_products)) * np.where(kids, 0.7, 1.0), 2)
    rating = np.round(np.clip(rng.normal(4.1, 0.55, n_products), 1.0, 5.0), 1)
    popularity = np.round(rng.normal(0.0, 1.0, n_products) + 0.6 * (rating - 4.1), 4)

    titles, descs, attrs = [], [], []
    for i in range(n_products):
        c = V.CATEGORIES[cat[i]]
        m = c.materials[mat[i]]
        b = V.BRANDS[brand[i]][0]
        head = c.nouns[noun[i]]
        col = V.COLOURS[colour[i]]
        prefix = "Kids " if kids[i] else ""
        wp = "Waterproof " if waterproof[i] else ""
        mat_word = "" if m.lower() in head.lower() else f"{m.title()} "
        titles.append(f"{b} {prefix}{wp}{mat_word}{head} - {col.title()}")
        parts = [f"colour: {col}", f"material: {m}", f"size: {V.SIZES[size[i]]}"]
        if c.waterproof:
            parts.append(f"waterproof: {'yes' if waterproof[i] else 'no'}")
        if c.kids:
            parts.append(f"age group: {'kids' if kids[i] else 'adult'}")
        attrs.append("; ".join(parts))
        descs.append(f"{head} by {b}, made of {m}. Size {V.SIZES[size[i]]}, finished in {col}. "
                     f"Rated {rating[i]:.1f} out of 5.")
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
    index = {"cat": cat, "colour": colour, "brand": brand, "waterproof": waterproof, "kids": kids}
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


def _one_query(rng: np.random.Generator, brands_of: list[list[int]]) -> dict:
    """Draw one intent and realise it as text. Returns the text and its constraints."""
    c_idx = int(rng.integers(0, len(V.CATEGORIES)))
    c = V.CATEGORIES[c_idx]
    brands_in_cat = brands_of[c_idx]
    surface = _pick(rng, _SURFACE_TABLE)
    constraint: dict = {"cat": c_idx, "colour": -1, "brand": -1, "waterproof": False, "kids": False}
    if surface == "exact":
        head = _pick(rng, c.nouns).lower()
    elif surface == "synonym":
        head = _pick(rng, c.synonyms)
    elif surface == "jargon":
        if rng.random() < 0.35:   # brand nickname + a catalog noun or synonym
            b = _pick(rng, brands_in_cat)
            constraint["brand"] = b
            head = f"{V.BRANDS[b][1]} {_pick(rng, c.synonyms + (c.nouns[0].lower(),))}"
        else:
            head = _pick(rng, c.jargon)
    elif surface == "usecase":
        head = _pick(rng, c.usecases)
        if not head.startswith(("something", "somewhere")) and rng.random() < 0.5:
            head = f"something for {head}" if rng.random() < 0.5 else f"{head} ideas"
    else:
        head = misspell(_pick(rng, c.nouns + c.synonyms).lower(), rng)

    pre, post = "", ""
    r = rng.random()
    if surface != "usecase" and r < 0.45:
        kind = int(rng.integers(0, 3))
        literal = rng.random() < 0.4
        if kind == 0:
            col = int(rng.integers(0, len(V.COLOURS)))
            constraint["colour"] = col
            pre = V.COLOURS[col] if literal else _pick(rng, V.COLOUR_SYNONYMS[V.COLOURS[col]])
        elif kind == 1 and c.waterproof:
            constraint["waterproof"] = True
            phrase = _pick(rng, V.WATERPROOF_PHRASES if literal else V.WATERPROOF_SYNONYMS)
            pre, post = (phrase, "") if not phrase.startswith("for ") else ("", phrase)
        elif c.kids:
            constraint["kids"] = True
            phrase = _pick(rng, V.KIDS_PHRASES if literal else V.KIDS_SYNONYMS)
            pre, post = (phrase, "") if not phrase.startswith("for ") else ("", phrase)
    filler = rng.random()
    if filler < 0.08:
        pre = f"best {pre}".strip()
    elif filler < 0.14:
        pre = f"cheap {pre}".strip()
    text = " ".join(p for p in (pre, head, post) if p)
    return {"query": text, "intent": surface, "category": c.label, **constraint}


# Surface forms repeated by weight (percent), so a uniform pick follows the weights.
_SURFACE_TABLE = [s for s, w in SURFACE_WEIGHTS for _ in range(int(round(w * 100)))]


def generate_queries(n_queries: int, rng: np.random.Generator, brands_of: list[list[int]]) -> pd.DataFrame:
    """Unique query texts with their intent constraints and a split by text."""
    rows: list[dict] = []
    seen: set[str] = set()
    attempts = 0
    while len(rows) < n_queries:
        attempts += 1
        if attempts > n_queries * 200:
            raise ValueError(f"cannot generate {n_queries} distinct queries from the sample vocabulary")
        row = _one_query(rng, brands_of)
        if row["query"] in seen:
            continue
        seen.add(row["query"])
        rows.append(row)
    queries = pd.DataFrame(rows)
    u = rng.random(len(queries))
    bounds = np.cumsum([s for _, s in SPLIT_SHARES])
    queries["split"] = np.array([name for name, _ in SPLIT_SHARES])[np.searchsorted(bounds, u, side="right").clip(0, 2)]
    queries.insert(0, "query_id", [f"q{i:05d}" for i in range(len(queries))])
    return queries


# ----------------------------------------------------------------------------- qrels
def grade_products(q: pd.Series, index: dict[str, np.ndarray], close: list[np.ndarray],
                   comp: list[np.ndarray]) -> np.ndarray:
    """Grades 0..3 of every product for one query intent (vectorised)."""
    same = index["cat"] == q["cat"]
    ok = np.ones_like(same)
    if q["colour"] >= 0:
        ok &= index["colour"] == q["colour"]
    if q["brand"] >= 0:
        ok &= index["brand"] == q["brand"]
    if q["waterproof"]:
        ok &= index["waterproof"]
    if q["kids"]:
        ok &= index["kids"]
    grade = np.zeros(len(same), np.int64)
    grade[np.isin(index["cat"], comp[q["cat"]])] = 1
    grade[np.isin(index["cat"], close[q["cat"]])] = 2
    grade[same] = 2
    grade[same & ok] = 3
    return grade


def generate_qrels(queries: pd.DataFrame, catalog: pd.DataFrame, index: dict[str, np.ndarray],
                   rng: np.random.Generator) -> pd.DataFrame:
    """Judged pool per query: its relevant products (capped) and sampled negatives."""
    key = {c.key: i for i, c in enumerate(V.CATEGORIES)}
    close = [np.array([key[k] for k in c.close], dtype=np.int64) for c in V.CATEGORIES]
    comp = [np.array([key[k] for k in c.complements], dtype=np.int64) for c in V.CATEGORIES]
    ids = catalog["product_id"].to_numpy()
    q_parts, p_parts, g_parts = [], [], []
    for q in queries.itertuples(index=False):
        grade = grade_products(pd.Series(q._asdict()), index, close, comp)
        chosen = []
        for g, cap in POOL_CAPS.items():
            idx = np.flatnonzero(grade == g)
            if len(idx) > cap:
                idx = np.sort(rng.choice(idx, cap, replace=False))
            chosen.append(idx)
        zero = np.flatnonzero(grade == 0)
        chosen.append(np.sort(rng.choice(zero, min(NEGATIVES_PER_QUERY, len(zero)), replace=False)))
        sel = np.concatenate(chosen)
        q_parts.append(np.full(len(sel), q.query, dtype=object))
        p_parts.append(ids[sel])
        g_parts.append(grade[sel])
    qrels = pd.DataFrame({"query": np.concatenate(q_parts), "product_id": np.concatenate(p_parts),
                          "relevance": np.concatenate(g_parts).astype(np.int64)})
    return qrels.sort_values(["query", "product_id"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- world
def generate_sample(n_products: int = 5000, n_queries: int = 1000, seed: int = 13) -> SampleWorld:
    """Build the whole sample world in memory (deterministic for a seed)."""
    if n_products < 4 * len(V.CATEGORIES):
        raise ValueError(f"--products must be at least {4 * len(V.CATEGORIES)} (4 per category)")
    if n_queries < 10:
        raise ValueError("--queries must be at least 10")
    rng = np.random.default_rng(seed)
    catalog, index = generate_catalog(n_products, rng)
    brands_of = [sorted(set(index["brand"][index["cat"] == c].tolist())) or [0] for c in range(len(V.CATEGORIES))]
    queries = generate_queries(n_queries, rng, brands_of)
    qrels = generate_qrels(queries, catalog, index, rng)
    engagement = simulate_engagement(qrels, catalog, seed=seed,
                                     model=UserModel(synonyms=V.production_synonyms()))
    # popularity is a latent of the simulation (what the shop's users like), not a product field
    catalog = catalog.drop(columns=["popularity"])
    queries_out = queries[["query_id", "query", "split", "intent", "category"]].reset_index(drop=True)
    return SampleWorld(catalog=catalog, queries=queries_out, qrels=qrels, engagement=engagement)


def sample_stats(world: SampleWorld) -> dict:
    """Statistics reported in the README and by the CLI."""
    from pipeline.data import vocabulary_mismatch_queries

    mismatch = vocabulary_mismatch_queries(world.queries, world.qrels, world.catalog)
    q = world.queries
    rel = world.qrels[world.qrels["relevance"] >= 2].groupby("query").size()
    stats = {
        "products": int(len(world.catalog)),
        "categories": int(world.catalog["category"].nunique()),
        "brands": int(world.catalog["brand"].nunique()),
        "queries": int(len(q)),
        **{f"queries_{s}": int((q["split"] == s).sum()) for s, _ in SPLIT_SHARES},
        "qrels": int(len(world.qrels)),
        "relevant_per_query_min": int(rel.reindex(q["query"]).fillna(0).min()),
        "relevant_per_query_median": float(rel.reindex(q["query"]).fillna(0).median()),
        "mismatch_queries": len(mismatch),
        "mismatch_share": len(mismatch) / max(1, len(q)),
        "engagement_rows": int(len(world.engagement)),
        **funnel_rates(world.engagement),
    }
    by_intent = q.assign(mm=q["query"].isin(mismatch)).groupby("intent")["mm"].agg(["size", "mean"])
    stats["by_intent"] = {k: {"queries": int(r["size"]), "mismatch_share": float(r["mean"])} for k, r in by_intent.iterrows()}
    return stats


def _readme(stats: dict, seed: int) -> str:
    lines = [
        "# shoprank sample world",
        "",
        f"Generated by `pipeline sample-data` (seed {seed}). Synthetic shop: catalog, queries with a",
        "train/valid/test split by query text, graded relevance (3 exact, 2 substitute, 1 complement,",
        "0 irrelevant) and engagement simulated by a position-biased user over an imperfect",
        "production ranker (`pipeline/simulate.py`).",
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
    return "\n".join(lines) + "\n"


def write_sample(out_dir: str | Path, n_products: int = 5000, n_queries: int = 1000, seed: int = 13) -> dict:
    """Generate the sample world and write it (atomically) to ``out_dir``; return stats."""
    from pipeline.artifacts import atomic_directory

    started = time.perf_counter()
    world = generate_sample(n_products, n_queries, seed)
    stats = sample_stats(world)
    with atomic_directory(out_dir) as tmp:
        write_parquet(world.catalog, tmp / "catalog.parquet")
        write_parquet(world.engagement, tmp / "engagement.parquet")
        write_parquet(world.queries, tmp / "queries.parquet")
        write_parquet(world.qrels, tmp / "qrels.parquet")
        (tmp / "README.md").write_text(_readme(stats, seed), encoding="utf-8")
    stats["seconds"] = round(time.perf_counter() - started, 2)
    stats["out_dir"] = str(out_dir)
    return stats

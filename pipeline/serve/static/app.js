// The search page: one request to GET /search per submitted query, rendered as a list.
// Plain DOM code (no framework, no build step) so the page works offline from the app itself.
"use strict";

const LABELS = { click: "p(click)", add_to_cart: "p(add to cart)", purchase: "p(purchase)" };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "n/a" : Number(x).toFixed(digits));

function price(value) {
  const n = Number(value);
  return Number.isFinite(n) ? n.toFixed(2) : String(value);
}

// The fusion breakdown: which probabilities made the expected value, and how the final score
// uses it. With a retrieval weight w > 0 the score blends both, each standardised (z) over this
// query's candidates; with w = 0 the score is the expected value itself (rerank/fusion.py).
function why(hit, fusion) {
  if (!fusion) return `retrieval order (no reranker): retrieval score ${fmt(hit.retrieval_score)}`;
  const terms = Object.entries(fusion.weights)
    .filter(([, w]) => w !== 0)
    .map(([task, w]) => `${w}×${LABELS[task] || task} ${fmt(hit["p_" + task])}`);
  const ev = `why: ${terms.join(" + ")} = expected value ${fmt(hit.expected_value, 4)}; `;
  const w = fusion.retrieval_weight;
  if (w === 0) return ev + "score = expected value";
  const parts = [];
  if (w < 1) parts.push(`${(1 - w).toFixed(2)}·z(expected value)`);
  parts.push(`${w.toFixed(2)}·z(retrieval ${fmt(hit.retrieval_score)})`);
  const note = w === 1 ? "; the blend fitted on the valid split gives the reranker no weight" : "";
  return ev + `score = ${parts.join(" + ")} = ${fmt(hit.score)} (z: over this query's candidates)${note}`;
}

function bars(hit, tasks) {
  const grid = el("div", { class: "bars" });
  for (const task of tasks) {
    const p = hit["p_" + task];
    const pct = Math.max(0, Math.min(100, 100 * p));
    const bar = el("div", { class: `bar ${task}`, role: "meter", "aria-valuemin": "0", "aria-valuemax": "1",
      "aria-valuenow": fmt(p), "aria-label": LABELS[task] || task });
    bar.append(el("span", { style: `width:${pct.toFixed(1)}%` }));
    grid.append(el("span", {}, LABELS[task] || task), bar, el("span", { class: "num" }, fmt(p)));
  }
  return grid;
}

function render(data) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of data.hits) {
    const meta = [hit.brand, hit.category, hit.price !== undefined ? price(hit.price) : null]
      .filter((x) => x !== undefined && x !== null && x !== "");
    list.append(el("li", { class: "hit", tabindex: "0", "data-product-id": hit.product_id },
      el("div", { class: "hit-head" },
        el("span", { class: "title" }, el("span", { class: "rank" }, `${hit.rank}.`), hit.title),
        el("span", { class: "score", title: "fused ranking score" }, `score ${fmt(hit.score)}`)),
      meta.length ? el("div", { class: "meta" }, meta.join(" · ")) : null,
      data.tasks.length ? bars(hit, data.tasks) : null,
      el("p", { class: "why" }, why(hit, data.fusion))));
  }
  const m = data.models || {};
  $("models").textContent = `index ${m.index || "?"} · reranker ${m.reranker || "none"} · ${m.backend || ""}`;
}

async function search(query, k) {
  const status = $("status");
  status.className = "";
  status.textContent = "Searching…";
  const started = performance.now();
  try {
    const response = await fetch(`/search?${new URLSearchParams({ q: query, k })}`);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    render(data);
    const ms = Math.round(performance.now() - started);
    status.textContent = data.hits.length ? `${data.hits.length} results for “${data.query}” in ${ms} ms`
      : `No results for “${data.query}”`;
  } catch (err) {
    $("results").replaceChildren();
    status.className = "error";
    status.textContent = `Error: ${err.message}`;
  }
}

function submit(event) {
  event.preventDefault();
  const query = $("q").value.trim();
  if (!query) { $("q").focus(); return; }
  const k = $("k").value;
  history.replaceState(null, "", `?${new URLSearchParams({ q: query, k })}`);
  search(query, k);
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", submit);
  // "/" jumps to the search box from anywhere; Escape in the box clears it.
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== $("q")) { e.preventDefault(); $("q").focus(); $("q").select(); }
  });
  $("q").addEventListener("keydown", (e) => { if (e.key === "Escape") $("q").value = ""; });
  const params = new URLSearchParams(location.search);
  if (params.get("q")) {
    $("q").value = params.get("q");
    if (params.get("k")) $("k").value = params.get("k");
    search(params.get("q"), $("k").value);
  }
});

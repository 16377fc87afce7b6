"""The prediction tasks and the engagement columns that count them, defined once.

Why here: the data contract (which columns an engagement log has), the reranker (which
probabilities it predicts, in funnel order) and evaluation (which count is the label of
which task) must agree on one table; a second copy is how they drift apart.
"""
from __future__ import annotations

#: Tasks in funnel order: a purchase needs an add-to-cart, which needs a click.
TASKS: tuple[str, ...] = ("click", "add_to_cart", "purchase")
#: Engagement count column of each task.
COUNT_COLUMNS: dict[str, str] = {"click": "clicks", "add_to_cart": "add_to_carts", "purchase": "purchases"}
#: Funnel count columns, impressions first: each may not exceed the one before it.
FUNNEL: list[str] = ["impressions", *COUNT_COLUMNS.values()]
#: Event names of an event-level log -> the count column they add to.
EVENTS: dict[str, str] = {"impression": "impressions", **COUNT_COLUMNS}

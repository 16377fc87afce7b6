"""Data commands: `pipeline sample-data` (and data validation)."""
from __future__ import annotations

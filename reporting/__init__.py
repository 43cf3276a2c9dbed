"""Reporting: metrics.jsonl, results.md, CMC and training curves, ranked-list pictures."""

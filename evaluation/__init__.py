"""Evaluation: the one evaluator (rank.py), k-reciprocal re-ranking (rerank.py), ranked lists of chosen queries."""

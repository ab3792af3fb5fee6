"""Evaluation of joint embeddings: retrieval metrics and figures."""

"""Evaluation harness: datasets and converters, label normalisation, grouped CV, metrics, reports."""

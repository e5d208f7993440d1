"""Evaluation: metrics, evaluation runs, visualisation."""

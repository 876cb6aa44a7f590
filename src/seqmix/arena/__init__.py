"""The arena: train, evaluate and race every architecture on the same data and budget, then report.

plan (presets.py, plan.py) -> cells (cells.py; each cached on disk by cache.py, so a killed run resumes
without recomputing finished cells) -> report (report.py: report.md, PNG plots, results.json).
"""

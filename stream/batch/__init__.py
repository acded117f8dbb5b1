"""Batch replay of recording archives on Ray (merc-batch): finding the recordings and naming their
outputs, the Ray actor that holds one session's models, the per-turn and score tables, and the
scheduling loop that resumes a killed run and records failures without stopping."""

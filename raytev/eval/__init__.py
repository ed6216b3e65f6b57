"""Evaluation: ranking metrics of a run against qrels (via ir_measures), QA answer accuracy, and their reports."""

"""Layer 5 - scoring: metrics with bootstrap CIs, baselines, system tables, style evaluation, metric sensitivity
and the factual guard.

Imports the layers below (core ... train).
"""

"""Layer 0 - configuration, paths, manifest, JSON/JSONL writers, the record schema and artifact folders.

Imports nothing else of radimpress_lib.
"""

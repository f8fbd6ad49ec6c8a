"""Layer 3 - language models: loading, prompts, generation, retrieval context, graph encoder, training callbacks.

Imports the layers below (core, data, clinical).
"""

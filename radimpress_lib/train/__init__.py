"""Layer 4 - training stages: SFT (and graph / distributed variants), reward model, DPO and online RL.

Imports the layers below (core, data, clinical, llm).
"""

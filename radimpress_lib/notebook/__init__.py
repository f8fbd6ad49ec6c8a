"""Layer 7 - what the numbered notebooks call: start-up, plots, the papermill runner and the notebook-specific
studies (explore, disease slice, graph ablation).

May import every layer; nothing imports it.
"""

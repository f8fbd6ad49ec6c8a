"""radimpress: coarse-to-fine LLM drafting of radiology impressions.

The notebooks in ``notebooks/`` only call this library; everything that can be
tested lives here.
"""

__version__ = "0.1.0"

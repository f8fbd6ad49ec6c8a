"""Two non-LLM reference points for impression generation.

* :func:`majority_baseline`: always answer the most frequent training
  impression (after normalisation), in its most common written form.
* :class:`~radimpress_lib.llm.retrieval.RetrievalBaseline` (re-exported here): nearest-neighbour
  retrieval. Training findings are embedded with scikit-learn TF-IDF (word 1-2-grams, sublinear tf,
  lower-cased, L2-normalised); a new report gets the impression of the training report whose
  findings are most cosine-similar to its findings.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from radimpress_lib.llm.retrieval import RetrievalBaseline, _check_strings, normalize_impression

__all__ = ["majority_baseline", "normalize_impression", "RetrievalBaseline"]

_WS = re.compile(r"\s+")

def majority_baseline(train_impressions: Sequence[str]) -> str:
    """Most frequent normalised impression, returned in its most common surface form.

    Surface forms are compared after whitespace normalisation; ties are broken
    by first occurrence.
    """
    _check_strings(train_impressions, "train impression")
    if len(train_impressions) == 0:
        raise ValueError("no training impressions")
    surfaces: dict[str, Counter[str]] = {}
    keys: Counter[str] = Counter()
    for text in train_impressions:
        key = normalize_impression(text)
        keys[key] += 1
        surfaces.setdefault(key, Counter())[_WS.sub(" ", text).strip()] += 1
    best_key = keys.most_common(1)[0][0]
    return surfaces[best_key].most_common(1)[0][0]



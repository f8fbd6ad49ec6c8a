"""Data exploration for notebook 01: tables and seaborn figures over canonical records.

Everything takes a pandas DataFrame of canonical records (``schema.REPORT_FIELDS``)
plus a ``split`` column, so it works for the Open-i CSV, the XML archive, the
benchmark split and a user's own data alike.
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from typing import Iterable

import datasets
import numpy as np
import pandas as pd

#: Indication categories, first match wins; the order puts specific reasons
#: before generic symptoms. Patterns are matched on lower-cased text.
INDICATION_CATEGORIES: list[tuple[str, str]] = [
    ("pre-operative", r"\bpre-?op|preoperative|pre-?surg|surgery|surgical clearance"),
    ("tuberculosis screen", r"\btb\b|tuberculosis|ppd|quantiferon|positive tb"),
    ("trauma / fall", r"\bfall|fell|trauma|mva|mvc|accident|injur|assault|fracture|rib pain"),
    ("chest pain", r"chest pain|chest discomfort|chest tightness|angina"),
    ("dyspnoea", r"dyspn|shortness of breath|\bsob\b|short of breath|breathing"),
    ("cough", r"cough"),
    ("infection / fever", r"fever|pneumonia|infect|sepsis|chills|bronchitis"),
    ("cancer / nodule follow-up", r"cancer|carcinoma|malignan|nodule|mass|tumor|tumour|metasta|lymphoma|oncolog"),
    ("cardiac", r"heart|cardiac|chf|hypertension|\bhtn\b|palpitation|arrhythm|atrial"),
    ("follow-up", r"follow[- ]?up|f/u|recheck|history of"),
    ("screening / routine", r"screen|routine|physical|annual|employment|immigration"),
]
NO_INDICATION = "(none)"
OTHER = "other"

_NUMBERING = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s*")
_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s.;,]+$")


def to_frame(data: datasets.DatasetDict | datasets.Dataset) -> pd.DataFrame:
    """Canonical records of every split as one DataFrame (``split`` column kept)."""
    if isinstance(data, datasets.Dataset):
        return data.to_pandas()
    frames = []
    for name, ds in data.items():
        frame = ds.to_pandas()
        frame["split"] = name
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def split_sizes(frame: pd.DataFrame) -> pd.DataFrame:
    """Reports per split, with the share of the total."""
    counts = frame["split"].replace("", "(unassigned)").value_counts().rename("reports")
    out = counts.to_frame()
    out["share"] = (out["reports"] / out["reports"].sum()).round(3)
    return out


def indication_category(text: str | None) -> str:
    """Coarse category of a free-text indication (first matching rule)."""
    if not text or not text.strip() or text.strip().lower() in {"none", "none.", "xxxx", "xxxx."}:
        return NO_INDICATION
    low = text.lower()
    for name, pattern in INDICATION_CATEGORIES:
        if re.search(pattern, low):
            return name
    return OTHER


def indication_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Counts and shares of indication categories."""
    cats = frame["indication"].map(indication_category)
    out = cats.value_counts().rename("reports").to_frame()
    out["share"] = (out["reports"] / len(frame)).round(3)
    return out


def is_normal(mesh: Iterable[str] | None) -> bool:
    """Open-i convention: a report whose only MeSH term is 'normal' is normal."""
    terms = [t.strip().lower() for t in (mesh if mesh is not None else []) if t and t.strip()]
    return bool(terms) and all(t == "normal" for t in terms)


def normal_share(frame: pd.DataFrame) -> pd.DataFrame:
    """Normal / abnormal / unlabelled counts per split (from the MeSH labels)."""
    def status(mesh) -> str:
        terms = list(mesh) if mesh is not None else []
        if not terms:
            return "unlabelled"
        return "normal" if is_normal(terms) else "abnormal"

    table = pd.crosstab(frame["split"].replace("", "(unassigned)"), frame["mesh"].map(status))
    for col in ("normal", "abnormal", "unlabelled"):
        if col not in table:
            table[col] = 0
    table = table[["normal", "abnormal", "unlabelled"]]
    labelled = (table["normal"] + table["abnormal"]).replace(0, np.nan)
    table["normal_share"] = (table["normal"] / labelled).round(3)
    return table


def impression_template(text: str) -> str:
    """Normalised impression: lower-case, no list numbering, single spaces, no trailing punctuation."""
    lines = [_NUMBERING.sub("", part) for part in re.split(r"(?<=[.])\s+(?=\d+[.)])", text.strip())]
    joined = _SPACE.sub(" ", " ".join(lines)).strip().lower()
    return _TRAILING.sub("", joined)


def top_templates(frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k most frequent normalised impressions with an example surface form."""
    templates = frame["impression"].map(impression_template)
    counts = templates.value_counts()
    rows = []
    for template, n in counts.head(k).items():
        forms = Counter(frame.loc[templates == template, "impression"])
        rows.append({"template": template, "reports": int(n), "share": round(n / len(frame), 4),
                     "surface_forms": len(forms), "most_common_form": forms.most_common(1)[0][0]})
    return pd.DataFrame(rows)


def label_frequencies(frame: pd.DataFrame, column: str, k: int) -> pd.DataFrame:
    """Most frequent terms of a list column (``mesh`` or ``problems``); MeSH qualifiers after '/' dropped."""
    counter: Counter[str] = Counter()
    for terms in frame[column]:
        heads = {t.split("/")[0].strip() for t in (terms if terms is not None else []) if t and t.strip()}
        counter.update(heads)  # count each report once per term
    rows = [{"term": t, "reports": n, "share": round(n / len(frame), 4)} for t, n in counter.most_common(k)]
    return pd.DataFrame(rows, columns=["term", "reports", "share"])


def token_lengths(frame: pd.DataFrame, tokenizer, fields: tuple[str, ...] = ("findings", "impression"),
                  batch_size: int = 512) -> pd.DataFrame:
    """Token counts (no special tokens) of each field with the run's tokenizer, long format."""
    parts = []
    for field in fields:
        texts = frame[field].fillna("").tolist()
        lengths: list[int] = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
            lengths.extend(len(ids) for ids in enc)
        parts.append(pd.DataFrame({"split": frame["split"].values, "field": field, "tokens": lengths}))
    return pd.concat(parts, ignore_index=True)


def length_summary(lengths: pd.DataFrame) -> pd.DataFrame:
    """Mean / median / p95 / max tokens per field and split."""
    grouped = lengths.groupby(["field", "split"])["tokens"]
    return grouped.agg(
        mean="mean", median="median", p95=lambda s: float(np.percentile(s, 95)), max="max", n="size"
    ).round(1)


def plot_lengths(lengths: pd.DataFrame):
    """Histogram of token lengths per field (hue = split)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fields = list(dict.fromkeys(lengths["field"]))
    fig, axes = plt.subplots(1, len(fields), figsize=(6 * len(fields), 3.8), squeeze=False)
    for ax, field in zip(axes[0], fields):
        sub = lengths[lengths["field"] == field]
        cap = float(np.percentile(sub["tokens"], 99)) if len(sub) else 1.0
        sns.histplot(data=sub[sub["tokens"] <= cap], x="tokens", hue="split", element="step",
                     stat="density", common_norm=False, bins=40, ax=ax)
        ax.set_title(f"{field} length (tokens, <= p99)")
    fig.tight_layout()
    return fig


def plot_counts(table: pd.DataFrame, label: str, value: str, title: str):
    """Horizontal bar chart of a frequency table."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    height = max(2.5, 0.32 * len(table) + 1)
    fig, ax = plt.subplots(figsize=(8, height))
    # long labels (whole impression templates) are shortened so the bars keep their room
    shown = table.assign(**{label: [textwrap.shorten(str(v), 60, placeholder=" ...") for v in table[label]]})
    sns.barplot(data=shown, y=label, x=value, ax=ax, color=sns.color_palette()[0])
    ax.set_title(title)
    ax.set_ylabel("")
    fig.tight_layout()
    return fig

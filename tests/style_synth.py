"""Synthetic impressions written in three reader styles (shared by the fine-stage tests)."""

from __future__ import annotations

import random

#: style -> (normal impression, abnormal template with {f} = finding sentence)
TEMPLATES = {
    "A": ("No acute cardiopulmonary abnormality.", "{f}. No acute cardiopulmonary abnormality."),
    "B": ("1. No active disease.", "1. {f}. 2. No active disease."),
    "C": ("Normal chest..", "{f}, likely. Otherwise normal chest.."),
}
FINDINGS = ["Right lower lobe pneumonia", "Small left pleural effusion", "Cardiomegaly", "Left basilar atelectasis"]
#: style -> the reader's own findings boilerplate (how they dictate a normal chest)
FINDINGS_BOILERPLATE = {
    "A": "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear.",
    "B": "Heart size within normal limits. Stable mediastinal contours. No focal airspace consolidation seen.",
    "C": "Cardiomediastinal silhouette appears grossly unremarkable. Lungs well expanded bilaterally.",
}


def records(n: int, seed: int = 0, split: str = "train", styles: str = "ABC", readers: bool = False) -> list[dict]:
    """``n`` canonical records cycling over ``styles``; every second one abnormal.

    ``readers=True``: real readers' habits instead: each writes their own findings
    boilerplate, and an abnormal impression is the bare finding ("Cardiomegaly.") with no
    template at all, so only the findings phrasing tells who wrote it.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = styles[i % len(styles)]
        f = rng.choice(FINDINGS) if i % 2 else None
        if readers:
            impression = TEMPLATES[s][0] if f is None else f + "."
            findings = FINDINGS_BOILERPLATE[s] + (f" {f}." if f else "")
        else:
            impression = TEMPLATES[s][0] if f is None else TEMPLATES[s][1].format(f=f)
            findings = (f or "Lungs are clear") + ". Heart size normal."
        out.append({"report_id": f"{split}{i}", "findings": findings,
                    "impression": impression, "indication": "Cough.", "comparison": "", "split": split,
                    "radiologist_id": None, "style": s})
    return out

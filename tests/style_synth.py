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


def records(n: int, seed: int = 0, split: str = "train", styles: str = "ABC") -> list[dict]:
    """``n`` canonical records cycling over ``styles``; every second one abnormal."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = styles[i % len(styles)]
        f = rng.choice(FINDINGS) if i % 2 else None
        impression = TEMPLATES[s][0] if f is None else TEMPLATES[s][1].format(f=f)
        out.append({"report_id": f"{split}{i}", "findings": (f or "Lungs are clear") + ". Heart size normal.",
                    "impression": impression, "indication": "Cough.", "comparison": "", "split": split,
                    "radiologist_id": None, "style": s})
    return out

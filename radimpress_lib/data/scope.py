"""Which studies a model is for: modality and body part (the default model: chest radiographs, XR CHEST).

A report of another study (a CT of the head, an MR of the knee) is not a chest X-ray report,
and a model fine-tuned on chest X-rays drafts it as one. :class:`StudyScope` says whether a
report's modality and body part are inside the scope a run is configured for
(``data.modalities`` / ``data.body_parts``): the data layer skips and counts reports outside
it (reason ``out_of_scope``), and ``radimpress draft`` flags or refuses them.

Values are compared after :func:`normalize_modality` / :func:`normalize_body_part`: case and
surrounding spaces are ignored and common synonyms map to one name (the DICOM radiography
codes ``CR`` / ``DX`` / ``DR`` are ``XR``; ``THORAX`` is ``CHEST``). A report whose modality or
body part is unknown (empty) is inside the scope: nothing says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["BODY_PART_ALIASES", "MODALITY_ALIASES", "StudyScope", "normalize_body_part", "normalize_modality"]

#: Spellings of a modality -> its name in a scope.
MODALITY_ALIASES: dict[str, str] = {
    "CR": "XR", "DX": "XR", "DR": "XR", "XRAY": "XR", "X-RAY": "XR", "RADIOGRAPH": "XR", "RADIOGRAPHY": "XR",
    "CAT": "CT", "MRI": "MR", "ULTRASOUND": "US",
}

#: Spellings of a body part -> its name in a scope.
BODY_PART_ALIASES: dict[str, str] = {"THORAX": "CHEST", "THORACIC": "CHEST"}


def _norm(value: str | None, aliases: dict[str, str]) -> str:
    key = " ".join((value or "").upper().split())
    return aliases.get(key, key)


def normalize_modality(value: str | None) -> str:
    """``'cr'`` -> ``'XR'``, ``' Ct '`` -> ``'CT'``, ``None`` -> ``''``."""
    return _norm(value, MODALITY_ALIASES)


def normalize_body_part(value: str | None) -> str:
    """``'Thorax'`` -> ``'CHEST'``, ``'head'`` -> ``'HEAD'``, ``None`` -> ``''``."""
    return _norm(value, BODY_PART_ALIASES)


@dataclass(frozen=True)
class StudyScope:
    """Accepted modalities and body parts (normalised); an empty set accepts any value."""

    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()

    @classmethod
    def of(cls, modalities: Iterable[str] | None = (), body_parts: Iterable[str] | None = ()) -> StudyScope:
        """A scope from configured names, e.g. ``StudyScope.of(["XR"], ["CHEST"])``."""
        return cls(frozenset(normalize_modality(m) for m in modalities or () if m.strip()),
                   frozenset(normalize_body_part(b) for b in body_parts or () if b.strip()))

    @property
    def unrestricted(self) -> bool:
        """True when the scope accepts every study."""
        return not self.modalities and not self.body_parts

    def describe(self) -> str:
        """``'XR CHEST'`` (``'any'`` for an empty side)."""
        modalities = "/".join(sorted(self.modalities)) or "any modality"
        return f"{modalities} {'/'.join(sorted(self.body_parts)) or 'any body part'}"

    def problem(self, modality: str | None, body_part: str | None) -> tuple[str, str] | None:
        """``(field, message)`` when the study is outside the scope, else None (inside, or unknown)."""
        mod, part = normalize_modality(modality), normalize_body_part(body_part)
        field = ("modality" if mod and self.modalities and mod not in self.modalities
                 else "body_part" if part and self.body_parts and part not in self.body_parts else None)
        if field is None:
            return None
        study = " ".join(v.strip() for v in (modality or "", body_part or "") if v and v.strip())
        return field, f"{study} study is outside the scope {self.describe()} (data.modalities / data.body_parts)"

    def as_dict(self) -> dict[str, list[str]]:
        """JSON-safe ``{"modalities": [...], "body_parts": [...]}``."""
        return {"modalities": sorted(self.modalities), "body_parts": sorted(self.body_parts)}

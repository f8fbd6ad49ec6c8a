"""Chest-radiograph lexicon of :mod:`radimpress_lib.clinical.graph` (anatomy, observations, modifiers).

Every term has a canonical ``name`` (what the graph stores and what hand annotations
use) and a regular expression matched on the *prepared* sentence (lower-cased, hyphens
and slashes read as spaces; see :func:`radimpress_lib.clinical.labeler._prepare`). Where terms
overlap the longest match wins ("pericardial effusion" over "effusion", "thoracic spine"
over "thoracic", "airspace disease" over "disease").

Observation ``kind``:

* ``finding``: an abnormality (effusion, opacity, fracture, ...);
* ``device``: support and surgical devices (pacemaker, sternotomy wires, clips, ...);
* ``normal``: a normal descriptor ("normal", "clear", "intact", "midline", "expanded");
* ``generic``: "abnormality" / "disease" / "process" / "findings", the noun of
  "no acute cardiopulmonary abnormality".

``group`` ties synonyms together for the findings-vs-impression comparison
(:func:`radimpress_lib.clinical.graph.compare_to_findings`); groups named after CheXpert
observations are the *significant* ones whose omission from an impression is counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ANATOMY, OBSERVATION, MODIFIER = "anatomy", "observation", "modifier"
FINDING, DEVICE, NORMAL, GENERIC = "finding", "device", "normal", "generic"

#: Groups whose omission from an impression counts (CheXpert's abnormal observations, minus devices).
SIGNIFICANT_GROUPS = frozenset({
    "pleural effusion", "pneumothorax", "consolidation", "lung opacity", "atelectasis", "edema", "cardiomegaly",
    "enlarged cardiomediastinum", "pneumonia", "lung lesion", "fracture", "pleural other",
})


@dataclass(frozen=True)
class Term:
    """One lexicon entry."""

    name: str
    type: str
    pattern: str
    kind: str | None = None  # observations only
    group: str | None = None  # observations only
    laterality: str | None = None  # inherent laterality ("bibasilar" -> bilateral)


def _a(name: str, pattern: str, laterality: str | None = None) -> Term:
    return Term(name, ANATOMY, pattern, laterality=laterality)


def _o(name: str, pattern: str, kind: str = FINDING, group: str | None = None) -> Term:
    return Term(name, OBSERVATION, pattern, kind=kind, group=group or name)


def _m(name: str, pattern: str) -> Term:
    return Term(name, MODIFIER, pattern)


TERMS: tuple[Term, ...] = (
    # ---------------------------------------------------------------- anatomy
    _a("lung", r"lungs?(?: fields?| parenchyma| zones?)?|pulmonary parenchyma|parenchyma(?:l)?|pulmonary|intrapulmonary"),
    _a("upper lobe", r"upper lobes?|upper lung(?: zones?| fields?)?"),
    _a("lower lobe", r"lower lobes?|lower lung(?: zones?| fields?)?"),
    _a("middle lobe", r"middle lobe"),
    _a("lingula", r"lingula(?:r)?(?: segment)?"),
    _a("base", r"(?:lung )?bases?|basilar|basal|basilar regions?"),
    _a("base", r"bibasilar|bibasal|bibasally", laterality="bilateral"),
    _a("apex", r"apex|apices|apical"),
    _a("apex", r"biapical", laterality="bilateral"),
    _a("hilum", r"hil(?:um|a|ar)|perihilar"),
    _a("midlung", r"mid lung(?: zones?| fields?)?|midlung(?: zones?)?|mid zones?"),
    _a("retrocardiac region", r"retrocardiac(?: region)?"),
    _a("costophrenic angle", r"costophrenic (?:angles?|recess(?:es)?|sulc(?:us|i))|cp angles?"),
    _a("heart", r"heart(?: size)?|cardiac(?: silhouette| size| contours?| shadow| diameter| dimensions?)?"
               r"|cardio ?pericardial silhouette|pericardial silhouette"),
    _a("cardiomediastinal silhouette",
       r"cardio ?mediastinal(?: silhouettes?| contours?| shadow| structures| size| width)?"),
    _a("mediastinum", r"(?:superior )?mediastin(?:um|al)(?: silhouette| contours?| structures| width| shadow)?"),
    _a("pulmonary vasculature", r"(?:pulmonary |lung )?(?:vascularity|vasculature|vessels|vascular markings"
                                r"|vascular structures|vascular pattern)"),
    _a("pleura", r"pleura(?:l)?(?: spaces?| surfaces?)?"),
    _a("hemidiaphragm", r"(?:hemi ?)?diaphragms?|hemidiaphragms?|diaphragmatic"),
    _a("aorta", r"(?:thoracic |descending |ascending )?aort(?:a|ic)(?: arch| knob| contours?)?"),
    _a("spine", r"(?:thoracic |lumbar |thoracolumbar |cervical )?spine|(?:thoracic )?vertebra[el]?(?: bod(?:y|ies))?"
                r"|vertebral bod(?:y|ies)|spinal|thoracolumbar junction"),
    _a("rib", r"ribs?"),
    _a("bones", r"(?:osseous|bony|skeletal) (?:structures|thorax|elements)|osseous|bony|bones?|skeleton"),
    _a("soft tissues", r"soft tissues?"),
    _a("trachea", r"trachea|tracheal"),
    _a("clavicle", r"clavicles?|clavicular"),
    _a("shoulder", r"shoulders?|glenohumeral"),
    _a("humerus", r"humer(?:us|al)(?: head)?"),
    _a("sternum", r"sternum"),
    _a("chest wall", r"chest wall"),
    _a("abdomen", r"(?:upper )?abdomen|abdominal|subdiaphragmatic"),
    _a("chest", r"chest|thorax|thoracic|intrathoracic"),
    _a("cardiopulmonary", r"cardiopulmonary|cardiothoracic"),
    _a("lymph node", r"lymph nodes?|nodes"),
    _a("breast", r"breasts?"),
    _a("neck", r"neck"),
    _a("interstitium", r"interstiti(?:um|al)"),
    _a("upper extremity", r"upper extremit(?:y|ies)|arm"),
    _a("cavoatrial junction", r"cavoatrial junction|cavo atrial junction"),
    _a("svc", r"superior vena cava|svc"),
    _a("right atrium", r"right atri(?:um|al)"),
    _a("axilla", r"axilla(?:e|ry)?"),
    # ------------------------------------------------------------ findings
    _o("effusion", r"effusions?|pleural fluid", group="pleural effusion"),
    _o("pericardial effusion", r"pericardial effusions?"),
    _o("pneumothorax", r"(?:hydro)?pneumothora(?:x|ces|xes)|ptx"),
    _o("consolidation", r"consolidat(?:ion|ions|ive|ed)|airspace consolidation"),
    _o("airspace disease", r"air ?space (?:disease|opacit(?:y|ies)|process(?:es)?|filling|infiltrates?)"
                           r"|alveolar (?:disease|process|opacit(?:y|ies)|filling)", group="lung opacity"),
    _o("opacity", r"opacit(?:y|ies)|opacification|densit(?:y|ies)", group="lung opacity"),
    _o("infiltrate", r"infiltrat(?:e|es|ion|ive)", group="lung opacity"),
    _o("increased markings", r"(?:increased|prominent|coarse(?:ned)?|accentuated|prominence of(?: the)?)"
                             r" (?:\w+ ){0,2}markings", group="lung opacity"),
    _o("atelectasis", r"atelecta(?:sis|ses|tic)(?: changes?)?|collapse", group="atelectasis"),
    _o("edema", r"edema|(?:vascular )?congestion|(?:congestive )?heart failure|chf|fluid overload", group="edema"),
    _o("cardiomegaly", r"cardiomegaly", group="cardiomegaly"),
    _o("enlarged", r"enlarge(?:d|ment)|prominen(?:t|ce)|widen(?:ed|ing)", group="enlarged"),
    _o("pneumonia", r"(?:broncho)?pneumoni(?:a|as|c)|infection|infectious (?:process|etiology)", group="pneumonia"),
    _o("nodule", r"nodul(?:e|es|ar(?:ity)?)(?: opacit(?:y|ies)| densit(?:y|ies))?|micronodul(?:e|es|ar)",
       group="lung lesion"),
    _o("mass", r"mass(?:es)?(?! effect)", group="lung lesion"),
    _o("lesion", r"lesions?", group="lung lesion"),
    _o("cavity", r"cavit(?:y|ies|ation|ary lesions?)", group="lung lesion"),
    _o("cardiomyopathy", r"cardiomyopath(?:y|ies)"),
    _o("granuloma", r"granulom(?:a|as|ata)|granulomatous (?:disease|changes?|sequela|process)"),
    _o("calcification", r"calcifications?"),
    _o("emphysema", r"emphysema(?:tous)?(?: changes?)?|copd|chronic obstructive (?:pulmonary|lung) disease"),
    _o("hyperinflation", r"hyperinflat(?:ion|ed)|hyperexpan(?:sion|ded)|hyperaerat(?:ion|ed)|overinflat(?:ion|ed)"
                         r"|hyperlucen(?:cy|t)"),
    _o("low lung volumes", r"low(?: lung)? volumes?|lung volumes (?:are|is) (?:\w+ )?(?:low|decreased|diminished)"
                           r"|hypoinflat(?:ion|ed)|hypoventilat(?:ion|ory)|poor (?:inspiration|inspiratory effort)"
                           r"|shallow inspiration"),
    _o("scarring", r"scar(?:s|ring|red)?"),
    _o("fibrosis", r"fibros(?:is|es)|fibrotic(?: changes?)?"),
    _o("fracture", r"fractur(?:e|es|ed)|fx", group="fracture"),
    _o("compression deformity", r"(?:compression|wedge) (?:deformit(?:y|ies)|fractures?)|(?:anterior )?wedging",
       group="fracture"),
    _o("degenerative changes", r"degenerative (?:changes?|disease|spurring|endplate changes)|degenerative"
                               r"|spondylo(?:sis|tic changes?)|osteophyt(?:e|es|osis)|(?:osteo)?arthritis"
                               r"|arthritic changes|spurring"),
    _o("scoliosis", r"(?:dextro|levo)?scolio(?:sis|tic)(?: curvature)?|(?:dextro|levo)?convex curvature"),
    _o("kyphosis", r"kyphos(?:is)|kyphotic(?: curvature)?"),
    _o("tortuosity", r"tortu(?:osity|ous)|ectasia|ectatic|unfold(?:ing|ed)"),
    _o("atherosclerosis", r"atherosclero(?:sis|tic)(?: (?:disease|changes?|calcifications?|vascular disease))?"
                          r"|atheromatous"),
    _o("hernia", r"(?:hiatal |hiatus )?hernias?"),
    _o("thickening", r"thicken(?:ing|ed)"),
    _o("blunting", r"blunt(?:ing|ed)"),
    _o("elevation", r"elevat(?:ion|ed)"),
    _o("flattening", r"flatten(?:ing|ed)"),
    _o("deformity", r"deformit(?:y|ies)"),
    _o("lymphadenopathy", r"(?:lymph ?)?adenopathy"),
    _o("bronchiectasis", r"bronchiectasis|bronchiectatic"),
    _o("bulla", r"bull(?:a|ae|ous)|blebs?"),
    _o("volume loss", r"volume loss|loss of volume"),
    _o("pneumoperitoneum", r"pneumoperitoneum|free (?:intraperitoneal |subdiaphragmatic )?air"),
    _o("osteopenia", r"osteopeni(?:a|c)|demineraliz(?:ation|ed)"),
    _o("crowding", r"crowding"),
    _o("eventration", r"eventration"),
    _o("aspiration", r"aspiration"),
    _o("borderline", r"(?:at |towards? )?(?:the )?upper limits? (?:of )?normal|top (?:of )?normal|upper normal"
                     r"|high normal|borderline"),
    # ------------------------------------------------------------- devices
    _o("pacemaker", r"pace ?makers?|pacers?|(?:pacing|defibrillator|pacemaker) (?:device|generator|leads?|wires?)"
                    r"|aicd|icd|defibrillator|dual lead pacemaker", kind=DEVICE, group="device"),
    _o("catheter", r"catheters?|picc(?: lines?)?|(?:central|venous|jugular|subclavian|dialysis) (?:venous )?"
                   r"(?:lines?|catheters?)|port a cath|portacath|mediport|port", kind=DEVICE, group="device"),
    _o("tube", r"(?:endotracheal|nasogastric|chest|feeding|et|ng|enteric|tracheostomy) tubes?|tracheostomy",
       kind=DEVICE, group="device"),
    _o("sternotomy", r"(?:median )?sternotomy(?: wires?| sutures?)?|sternal (?:wires?|sutures?|cerclage)|cabg",
       kind=DEVICE, group="device"),
    _o("surgical clips", r"(?:surgical |vascular )?clips?", kind=DEVICE, group="device"),
    _o("hardware", r"(?:orthopedic |surgical |fixation )?hardware|(?:internal )?fixation|screws?|plates?|rods?"
                   r"|prosthes(?:is|es)|arthroplast(?:y|ies)", kind=DEVICE, group="device"),
    _o("stent", r"stents?", kind=DEVICE, group="device"),
    _o("valve replacement", r"(?:prosthetic |aortic )?valve replacement|prosthetic valves?", kind=DEVICE,
       group="device"),
    _o("postsurgical changes", r"post ?(?:operative|surgical) changes?|(?:surgical|postoperative) changes?",
       kind=DEVICE, group="device"),
    _o("monitoring leads", r"(?:ekg|ecg|monitoring|cardiac monitoring) leads", kind=DEVICE, group="device"),
    # ---------------------------------------------------- normal descriptors
    _o("normal", r"normal(?: (?:in )?size)?|within (?:the )?normal (?:limits|range)|wnl|normal limits"
                 r"|unremarkable", kind=NORMAL),
    _o("clear", r"clear", kind=NORMAL),
    _o("intact", r"intact", kind=NORMAL),
    _o("midline", r"midline", kind=NORMAL),
    _o("expanded", r"(?:well |fully )?(?:expanded|inflated|aerated)", kind=NORMAL),
    # ----------------------------------------------------------- generic
    _o("abnormality", r"abnormalit(?:y|ies)|diseases?|process(?:es)?|findings?|patholog(?:y|ies)", kind=GENERIC),
    # ----------------------------------------------------------- modifiers
    _m("minimal", r"minimal(?:ly)?|trace|tiny|slight(?:ly)?|subtle"),
    _m("mild", r"mild(?:ly)?"),
    _m("moderate", r"moderate(?:ly)?(?: sized?)?"),
    _m("severe", r"severe(?:ly)?|marked(?:ly)?|extensive|massive"),
    _m("small", r"small(?:er)?"),
    _m("large", r"large(?:r)?"),
    _m("focal", r"focal"),
    _m("multifocal", r"multifocal"),
    _m("patchy", r"patchy"),
    _m("diffuse", r"diffuse(?:ly)?"),
    _m("linear", r"linear|streaky|plate ?like|discoid|band like"),
    _m("subsegmental", r"subsegmental"),
    _m("acute", r"acute|active"),
    _m("chronic", r"chronic|old|healed|remote"),
    _m("calcified", r"calcified|calcific"),
)

#: Modifiers that become an observation when no observation follows them in the phrase.
MODIFIER_AS_OBSERVATION = {"calcified": "calcification"}
#: Observations that are modifiers when an observation follows them in the phrase.
OBSERVATION_AS_MODIFIER = {"borderline"}

#: Generic descriptors renamed by the anatomy they are located at (name, anatomy) -> (name, group).
ANATOMY_SPECIFIC = {
    ("enlarged", "heart"): ("cardiomegaly", "cardiomegaly"),
    ("borderline", "heart"): ("cardiomegaly", "cardiomegaly"),
    ("enlarged", "mediastinum"): ("mediastinal widening", "enlarged cardiomediastinum"),
    ("enlarged", "cardiomediastinal silhouette"): ("mediastinal widening", "enlarged cardiomediastinum"),
    ("borderline", "mediastinum"): ("mediastinal widening", "enlarged cardiomediastinum"),
    ("borderline", "cardiomediastinal silhouette"): ("mediastinal widening", "enlarged cardiomediastinum"),
    ("thickening", "pleura"): ("thickening", "pleural other"),
    ("scarring", "pleura"): ("scarring", "pleural other"),
}
#: Group of renamed observations that the lexicon does not list itself.
EXTRA_GROUPS = {"mediastinal widening": "enlarged cardiomediastinum"}

#: A normal descriptor at an anatomy implies the absence of these groups (negation-flip check only).
NORMAL_IMPLIES_ABSENT = {
    "heart": ("cardiomegaly",),
    "cardiomediastinal silhouette": ("cardiomegaly", "enlarged cardiomediastinum"),
    "mediastinum": ("enlarged cardiomediastinum",),
    "lung": ("lung opacity", "consolidation", "pneumonia"),
}

#: Severity scales used by the severity-change corruption (canonical modifier -> replacement choices).
SEVERITY_SWAPS = {
    "minimal": ("moderate", "severe", "large"),
    "mild": ("severe", "moderate"),
    "moderate": ("mild", "severe", "minimal"),
    "severe": ("mild", "minimal"),
    "small": ("large", "moderate"),
    "large": ("small", "minimal"),
}

LATERALITY_PRE = {"left": "left", "right": "right", "bilateral": "bilateral", "both": "bilateral"}
LATERALITY_POST = {"bilaterally": "bilateral"}

_COMPILED: list[tuple[re.Pattern[str], Term]] | None = None


def compiled_terms() -> list[tuple[re.Pattern[str], Term]]:
    """Compiled ``(regex, term)`` pairs (word-bounded), built once."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = [(re.compile(rf"\b(?:{t.pattern})\b"), t) for t in TERMS]
    return _COMPILED


def group_of(name: str) -> str:
    """Group of a canonical observation name (the name itself when unknown)."""
    for t in TERMS:
        if t.type == OBSERVATION and t.name == name:
            return t.group or name
    return EXTRA_GROUPS.get(name, name)

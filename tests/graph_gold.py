"""Hand-annotated entity graphs for validating :mod:`radimpress_lib.clinical.graph` (no report text here).

Each entry points at one sentence of the Open-i benchmark **train** split
(``opi-benchmark/train.jsonl``; never validate/test) exactly as ``tests/labeler_gold.py``
does: the row's ``idx``, the field (``"inputs"`` = findings, ``"target"`` = impression),
the sentence number from :func:`radimpress_lib.clinical.labeler.split_sentences` and the first 8 hex
digits of the sentence's SHA-256 (drift check).

Entities are written ``"o|name|status|laterality"`` (observation), ``"a|name||laterality"``
(anatomy; laterality optional) or ``"m|name"`` (modifier), with the canonical names of
:mod:`radimpress_lib.clinical.graph_lexicon` where the lexicon has the concept and a plain name where
it does not (those count as misses for the extractor). Relations are ``"src>rel>dst"`` by
entity name. Conventions (those of the module docstring of :mod:`radimpress_lib.clinical.graph`):
"XXXX" is an unknown word; change descriptors ("stable", "unchanged", "improvement",
"persistent", "interval") are not represented; modifiers come from the lexicon's modifier
vocabulary only ("significant", "dilated", "curvilinear" are not annotated); located_at is
annotated only where the text states the location (phrase, preposition, or subject of the
predicate), not where it is merely implied; "consistent with X" makes X present, "suggesting",
"likely", "represents a/b" differentials make it uncertain.

Two batches, all distinct sentences, sampled by ``random.Random(seed)`` over train sentences
of at most 28 words (one third any sentence, two thirds sentences with a finding keyword):

* ``GOLD_DEV`` (45, seed 20261123): the rules and lexicon were revised while looking at the
  extractor's errors on this batch.
* ``GOLD_HELDOUT`` (30, seed 777): annotated together with the dev batch, before the
  extractor was run on any annotated sentence.

Measured (micro F1 over sentences; entities = anatomy + observations, relations incl. modify):
the extractor as first written scored dev entity 0.887 / relation 0.877 and held-out 0.920 /
0.867. After revising lexicon and rules on the dev errors: dev 0.981 / 0.983, held-out
unchanged (0.920 / 0.867). One held-out error then exposed a generic bug (the "clear"
observation masked the labeler's longer "clear of" cue, so "lungs are clear of X, Y, or Z"
became an uncertain differential); after that fix held-out 0.964 / 0.933 and all 75 sentences
0.974 / 0.962. ``tests/test_graph.py`` prints the current figures.
"""

from __future__ import annotations

from typing import NamedTuple


class GraphGold(NamedTuple):
    """Reference to one train-split sentence and its hand-annotated graph."""

    idx: int
    field: str
    sentence_no: int
    sha256_8: str
    entities: tuple[str, ...]
    relations: tuple[str, ...] = ()


GOLD_DEV: tuple[GraphGold, ...] = (
    GraphGold(217, "target", 0, "1682b54e", ("m|acute", "o|abnormality|absent"), ("acute>modify>abnormality",)),
    GraphGold(133, "inputs", 2, "cc62883a", ("a|heart", "o|normal|present"), ("normal>located_at>heart",)),
    GraphGold(593, "inputs", 1, "dbcc25ba", ("a|heart", "o|normal|present"), ("normal>located_at>heart",)),
    GraphGold(1766, "inputs", 2, "72bfe1a9", ("m|focal", "o|consolidation|absent"), ("focal>modify>consolidation",)),
    GraphGold(1997, "inputs", 0, "82ee8b93", ("a|chest",)),
    GraphGold(
        876,
        "target",
        0,
        "bd6c7b34",
        ("m|acute", "a|cardiopulmonary", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>cardiopulmonary"),
    ),
    GraphGold(
        2642,
        "inputs",
        2,
        "c4dd5e1c",
        ("m|patchy", "a|base||right", "o|airspace disease|present|right"),
        ("patchy>modify>airspace disease", "airspace disease>located_at>base"),
    ),
    GraphGold(1812, "inputs", 0, "0c7c6240", ("a|heart", "o|normal|present"), ("normal>located_at>heart",)),
    GraphGold(670, "inputs", 0, "a5f3528d", ("a|heart", "a|lung")),
    GraphGold(
        235,
        "inputs",
        3,
        "dfa1eda2",
        ("m|focal", "a|lung", "o|infiltrate|absent", "a|pleura", "o|effusion|absent"),
        ("focal>modify>infiltrate", "infiltrate>located_at>lung", "effusion>located_at>pleura"),
    ),
    GraphGold(2042, "target", 0, "935ed781", ("a|chest",)),
    GraphGold(779, "target", 0, "9340540f", ("a|lung", "o|clear|present"), ("clear>located_at>lung",)),
    GraphGold(
        2633,
        "inputs",
        0,
        "21fcf130",
        ("a|cardiomediastinal silhouette", "o|normal|present"),
        ("normal>located_at>cardiomediastinal silhouette",),
    ),
    GraphGold(1639, "inputs", 0, "4c3cf5d2", ("o|low lung volumes|present",)),
    GraphGold(1198, "inputs", 2, "2513d9b9", ("a|lung", "o|clear|present"), ("clear>located_at>lung",)),
    GraphGold(
        497,
        "inputs",
        4,
        "775357aa",
        ("a|upper extremity||right", "o|catheter|present|right", "a|cavoatrial junction"),
        ("catheter>located_at>upper extremity", "catheter>located_at>cavoatrial junction"),
    ),
    GraphGold(644, "target", 1, "0f7a2bfc", ("o|pericardial effusion|uncertain", "o|cardiomyopathy|uncertain")),
    GraphGold(
        2174,
        "inputs",
        0,
        "a0f20dba",
        ("a|cardiomediastinal silhouette", "o|normal|present"),
        ("normal>located_at>cardiomediastinal silhouette",),
    ),
    GraphGold(
        2731,
        "inputs",
        3,
        "c02d19e6",
        ("o|degenerative changes|present", "a|spine"),
        ("degenerative changes>located_at>spine",),
    ),
    GraphGold(
        2641,
        "target",
        0,
        "e7c60662",
        ("m|acute", "a|cardiopulmonary", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>cardiopulmonary"),
    ),
    GraphGold(2079, "inputs", 5, "8ce3c3c7", ("o|midline|present", "a|trachea"), ("midline>located_at>trachea",)),
    GraphGold(
        2659,
        "inputs",
        1,
        "d28376a4",
        ("a|interstitium", "o|opacity|present", "o|edema|present", "a|lower lobe"),
        ("opacity>located_at>interstitium", "opacity>suggestive_of>edema", "edema>located_at>lower lobe"),
    ),
    GraphGold(
        1844,
        "inputs",
        1,
        "e17bf0f3",
        ("m|focal", "o|consolidation|absent", "a|pleura", "o|effusion|absent", "o|pneumothorax|absent"),
        ("focal>modify>consolidation", "effusion>located_at>pleura"),
    ),
    GraphGold(
        433,
        "inputs",
        1,
        "4e086915",
        (
            "a|lower lobe||bilateral",
            "o|opacity|present|bilateral",
            "m|subsegmental",
            "o|atelectasis|present",
            "o|scarring|present",
        ),
        ("opacity>located_at>lower lobe", "subsegmental>modify>atelectasis"),
    ),
    GraphGold(
        259,
        "inputs",
        3,
        "5b0ef28c",
        ("o|pneumothorax|absent", "a|pleura", "o|effusion|absent", "m|large", "m|focal", "o|consolidation|absent"),
        ("effusion>located_at>pleura", "large>modify>consolidation", "focal>modify>consolidation"),
    ),
    GraphGold(2120, "inputs", 1, "168156e5", ("o|tortuosity|present", "a|aorta"), ("tortuosity>located_at>aorta",)),
    GraphGold(
        305,
        "target",
        3,
        "18d4363d",
        ("a|lower lobe||right", "o|cavity|uncertain|right"),
        ("cavity>located_at>lower lobe",),
    ),
    GraphGold(321, "inputs", 3, "b2013df4", ("a|pleura", "o|effusion|absent"), ("effusion>located_at>pleura",)),
    GraphGold(
        247,
        "target",
        0,
        "af0254fb",
        ("a|pleura||bilateral", "o|effusion|present|bilateral"),
        ("effusion>located_at>pleura",),
    ),
    GraphGold(
        169,
        "target",
        0,
        "1d311ef9",
        (
            "a|base||left",
            "o|opacity|present|left",
            "o|atelectasis|uncertain",
            "o|scarring|uncertain",
            "o|elevation|present",
            "a|hemidiaphragm",
        ),
        (
            "opacity>located_at>base",
            "opacity>suggestive_of>atelectasis",
            "opacity>suggestive_of>scarring",
            "elevation>located_at>hemidiaphragm",
        ),
    ),
    GraphGold(
        2335,
        "target",
        0,
        "406cef9a",
        ("o|consolidation|present|left", "a|base||left", "o|opacity|present|left"),
        ("opacity>located_at>base", "consolidation>located_at>base"),
    ),
    GraphGold(2665, "inputs", 1, "545a6a4b", ("m|mild", "o|cardiomegaly|present"), ("mild>modify>cardiomegaly",)),
    GraphGold(
        2419,
        "inputs",
        0,
        "f72e5528",
        ("o|sternotomy|present", "o|valve surgery|present", "a|mitral valve"),
        ("valve surgery>located_at>mitral valve",),
    ),
    GraphGold(
        1477,
        "inputs",
        1,
        "cf882fd4",
        ("m|mild", "o|tortuosity|present", "a|aorta"),
        ("mild>modify>tortuosity", "tortuosity>located_at>aorta"),
    ),
    GraphGold(
        406,
        "inputs",
        3,
        "80e23d7b",
        ("m|focal", "o|consolidation|absent", "o|pneumothorax|absent", "m|large", "a|pleura", "o|effusion|absent"),
        ("focal>modify>consolidation", "large>modify>effusion", "effusion>located_at>pleura"),
    ),
    GraphGold(
        2320,
        "inputs",
        3,
        "efc5e178",
        ("a|pleura", "o|effusion|absent", "o|pneumothorax|absent"),
        ("effusion>located_at>pleura",),
    ),
    GraphGold(322, "inputs", 3, "488ac35b", ("o|pneumothorax|absent",)),
    GraphGold(2389, "inputs", 2, "9f730ca6", ("a|pleura", "o|effusion|absent"), ("effusion>located_at>pleura",)),
    GraphGold(1714, "inputs", 3, "2df0178a", ("a|heart", "o|cardiomegaly|absent"), ("cardiomegaly>located_at>heart",)),
    GraphGold(
        305,
        "target",
        0,
        "1d1722e6",
        ("m|small", "a|pleura||right", "o|effusion|present|right"),
        ("small>modify>effusion", "effusion>located_at>pleura"),
    ),
    GraphGold(
        1766,
        "target",
        2,
        "465ede43",
        ("o|pneumonia|absent", "m|acute", "a|cardiopulmonary", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>cardiopulmonary"),
    ),
    GraphGold(
        1559, "target", 0, "2d780a48", ("o|pacemaker|present|left", "a|heart||left"), ("pacemaker>located_at>heart",)
    ),
    GraphGold(2052, "inputs", 6, "5da8b0f7", ("a|lung", "o|edema|absent"), ("edema>located_at>lung",)),
    GraphGold(
        1089,
        "inputs",
        2,
        "10f1451e",
        ("a|pleura", "o|effusion|absent", "o|pneumothorax|absent", "m|focal", "o|airspace disease|absent"),
        ("effusion>located_at>pleura", "focal>modify>airspace disease"),
    ),
    GraphGold(51, "target", 0, "aa8e05a3", ("m|large", "o|hernia|present"), ("large>modify>hernia",)),
)

GOLD_HELDOUT: tuple[GraphGold, ...] = (
    GraphGold(
        144,
        "target",
        0,
        "7df52a9c",
        ("m|acute", "a|cardiopulmonary", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>cardiopulmonary"),
    ),
    GraphGold(1864, "inputs", 2, "b04a6ad7", ("a|cardiomediastinal silhouette", "o|dextrocardia|uncertain")),
    GraphGold(
        768,
        "inputs",
        2,
        "a35ffed3",
        ("m|mild", "o|elevation|present|right", "a|hemidiaphragm||right"),
        ("mild>modify>elevation", "elevation>located_at>hemidiaphragm"),
    ),
    GraphGold(1528, "inputs", 2, "bac0b7f4", ("o|deformity|present", "a|spine"), ("deformity>located_at>spine",)),
    GraphGold(862, "target", 3, "ee2a22a8", ("a|lung", "o|edema|absent", "o|consolidation|absent")),
    GraphGold(
        1398,
        "inputs",
        4,
        "d50f3cad",
        ("m|calcified", "o|granuloma|present|left", "a|base||left"),
        ("calcified>modify>granuloma", "granuloma>located_at>base"),
    ),
    GraphGold(2312, "inputs", 0, "28fe3202", ("a|cardiomediastinal silhouette",)),
    GraphGold(
        2622,
        "target",
        0,
        "f31c0080",
        ("m|acute", "a|cardiopulmonary", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>cardiopulmonary"),
    ),
    GraphGold(2360, "inputs", 3, "d96e3971", ("a|pleura", "o|effusion|absent"), ("effusion>located_at>pleura",)),
    GraphGold(
        619,
        "inputs",
        0,
        "5184e03f",
        ("a|heart", "m|mild", "o|cardiomegaly|present"),
        ("mild>modify>cardiomegaly", "cardiomegaly>located_at>heart"),
    ),
    GraphGold(2483, "inputs", 6, "d6ec143e", ("a|aorta", "o|tortuosity|present"), ("tortuosity>located_at>aorta",)),
    GraphGold(2498, "target", 0, "291dcc03", ("m|acute", "o|abnormality|absent"), ("acute>modify>abnormality",)),
    GraphGold(
        755, "inputs", 2, "d7b5215f", ("m|focal", "o|airspace disease|absent"), ("focal>modify>airspace disease",)
    ),
    GraphGold(
        2287,
        "target",
        0,
        "b2772f06",
        ("m|acute", "a|lung", "o|abnormality|absent"),
        ("acute>modify>abnormality", "abnormality>located_at>lung"),
    ),
    GraphGold(
        954,
        "inputs",
        0,
        "862ff5a1",
        ("a|heart", "a|mediastinum", "a|bones", "o|normal|present"),
        ("normal>located_at>heart", "normal>located_at>mediastinum", "normal>located_at>bones"),
    ),
    GraphGold(
        2453,
        "inputs",
        0,
        "ac75bcdc",
        ("a|heart", "a|lung", "a|mediastinum", "o|normal|present"),
        ("normal>located_at>heart", "normal>located_at>lung", "normal>located_at>mediastinum"),
    ),
    GraphGold(
        1680,
        "inputs",
        1,
        "48aedf3f",
        (
            "a|lung",
            "o|clear|present",
            "m|focal",
            "o|airspace disease|absent",
            "o|pneumothorax|absent",
            "a|pleura",
            "o|effusion|absent",
        ),
        (
            "clear>located_at>lung",
            "focal>modify>airspace disease",
            "effusion>located_at>pleura",
            "airspace disease>located_at>lung",
        ),
    ),
    GraphGold(2273, "target", 0, "0874e54e", ("o|normal|present", "a|chest"), ("normal>located_at>chest",)),
    GraphGold(
        2693,
        "inputs",
        0,
        "c15e8d4f",
        ("m|minimal", "o|airspace disease|uncertain|right", "a|base||right", "a|midclavicular line"),
        (
            "minimal>modify>airspace disease",
            "airspace disease>located_at>base",
            "airspace disease>located_at>midclavicular line",
        ),
    ),
    GraphGold(
        2165,
        "inputs",
        7,
        "265e8ef1",
        ("o|opacity|present|right", "a|costophrenic angle||right", "o|skinfold|uncertain"),
        ("opacity>located_at>costophrenic angle", "opacity>suggestive_of>skinfold"),
    ),
    GraphGold(1048, "inputs", 4, "7d8dea94", ("o|sternotomy|present",)),
    GraphGold(13, "inputs", 2, "a08dddec", ("a|pleura", "o|effusion|absent"), ("effusion>located_at>pleura",)),
    GraphGold(
        1740,
        "inputs",
        1,
        "19e4e5be",
        ("o|clear|present", "a|lung", "m|calcified", "o|granuloma|present"),
        ("clear>located_at>lung", "calcified>modify>granuloma"),
    ),
    GraphGold(
        1833,
        "inputs",
        4,
        "daa88570",
        ("a|base||left", "a|retrocardiac region||left", "o|opacity|present|left"),
        ("opacity>located_at>base", "opacity>located_at>retrocardiac region"),
    ),
    GraphGold(
        1759,
        "inputs",
        1,
        "4b90d495",
        ("o|hyperinflation|present", "a|lung", "o|emphysema|uncertain"),
        ("hyperinflation>located_at>lung", "hyperinflation>suggestive_of>emphysema"),
    ),
    GraphGold(1460, "target", 1, "cbba1b1b", ("o|nodule|absent", "a|lung"), ("nodule>located_at>lung",)),
    GraphGold(
        2335,
        "inputs",
        1,
        "9d3bcf94",
        ("a|base||left", "o|consolidation|present|left", "o|opacity|present|left"),
        ("opacity>located_at>base", "consolidation>located_at>base"),
    ),
    GraphGold(
        1144,
        "inputs",
        3,
        "84ef20c9",
        ("a|hilum||right", "o|calcification|present|right"),
        ("calcification>located_at>hilum",),
    ),
    GraphGold(2073, "inputs", 4, "4a0ba839", ("o|pneumothorax|absent",)),
    GraphGold(
        1149,
        "inputs",
        2,
        "0fa0cd48",
        ("m|small", "m|calcified", "a|upper lobe||right", "o|nodule|present|right"),
        ("small>modify>nodule", "calcified>modify>nodule", "nodule>located_at>upper lobe"),
    ),
)

GOLD: tuple[GraphGold, ...] = GOLD_DEV + GOLD_HELDOUT

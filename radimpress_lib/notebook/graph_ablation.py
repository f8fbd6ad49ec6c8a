"""Entity-graph ablation (notebook 09): no graph vs linearised graph vs GNN soft prompt.

Each variant is an SFT model (same base model, data, prompt context, LoRA settings and
steps) with the findings' entity graph given one more way. Two budgets (``graph.ablation_max_steps``):

* equal budget (the default, a number of steps): every arm, a no-graph one (``sft_graph_none``)
  included, trains that many optimizer steps on every layer (the GNN soft prompt needs gradients
  through the whole model, so the cached-trunk trainer of notebook 02 cannot serve it, and using it
  for the other arms only would confound the comparison);
* ``null``: each graph variant trains with notebook 02's SFT settings and the no-graph arm is the
  ``sft`` system of notebooks 02/05, read back.

The arms:

* ``none``: no graph (``sft_graph_none``, or ``sft`` read back);
* ``text``: the graph linearised as text after the findings (:func:`radimpress_lib.clinical.graph.linearize_graph`),
  trained with :func:`radimpress_lib.train.sft.train_sft`;
* ``gnn``: ``graph.n_prefix`` soft-prompt vectors from a GNN over the graph, trained jointly
  with the LoRA adapter (:func:`radimpress_lib.train.graph_sft.train_graph_prefix_sft`).

Adapters go to ``outputs/<model>/sft_graph_<variant>/`` (not committed); predictions to
``predictions/sft_graph_<variant>.jsonl``; the systems ``sft_graph_*`` to ``metrics.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from radimpress_lib.core.config import Params
from radimpress_lib.llm import checkpoints, generation, retrieval
from radimpress_lib.train import graph_sft, sft

__all__ = ["ABLATION_METRICS", "ablation_table", "arms", "baseline_system", "budget_note", "decode_variant",
           "decode_variants", "equal_budget", "load_baseline", "load_sft_baseline", "negation_disagreements",
           "plot_ablation", "plot_losses", "sft_settings", "system_name", "train_variant", "train_variants",
           "variant_dir"]

#: Metrics of the ablation table (issue: ROUGE-L, label F1, graph F1, negation-flip rate).
ABLATION_METRICS = ("rougeL", "label_f1_micro", "graph_f1", "negation_flip_rate", "hallucinated_finding_rate",
                    "omitted_finding_rate")

LogFn = Callable[[str], None]


def equal_budget(params: Params) -> bool:
    """Whether every arm, the no-graph one included, is trained here for ``graph.ablation_max_steps`` steps."""
    return params.graph.ablation_max_steps is not None


def arms(params: Params) -> list[str]:
    """The variants this run trains: ``none`` first under an equal budget, then ``graph.ablation_variants``."""
    return (["none"] if equal_budget(params) else []) + list(params.graph.ablation_variants)


def system_name(variant: str, params: Params) -> str:
    """``metrics.json`` system of a variant; ``none`` is ``sft_graph_none`` under an equal budget, else ``sft``."""
    if variant == "none" and not equal_budget(params):
        return "sft"
    return f"sft_graph_{variant}"


def baseline_system(params: Params) -> str:
    """The no-graph system the variants are compared with."""
    return system_name("none", params)


def sft_settings(params: Params):
    """SFT settings of the trained arms: 02's, or, under an equal budget, 02's recipe for
    ``graph.ablation_max_steps`` steps on every layer (the trl trainer; see the module docstring)."""
    if not equal_budget(params):
        return params.sft
    return params.sft.model_copy(update={"max_steps": params.graph.ablation_max_steps, "trainer": "trl"})


def variant_dir(params: Params, variant: str) -> Path:
    """Where a trained variant's adapter (and, for ``gnn``, encoder) is written."""
    if variant not in arms(params):
        raise ValueError(f"graph ablation variant must be one of {arms(params)} (graph.ablation_variants"
                         f"{', plus none' if equal_budget(params) else ''}), got {variant!r}")
    return params.output_dir / f"sft_graph_{variant}"


def _sft_model_config(params: Params, adapter: str | None) -> dict[str, Any]:
    # The model_config notebook 05 gives the SFT decode (its params_hash identifies the predictions).
    return {"model": params.model.name, "adapter": adapter, "sft": params.params_hash("sft")}


def load_baseline(params: Params, test: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """None under an equal budget (the no-graph arm is trained here), else :func:`load_sft_baseline`."""
    return None if equal_budget(params) else load_sft_baseline(params, test)


def budget_note(params: Params, baseline: Mapping[str, Any] | None, n_test: int) -> str:
    """One line for the notebook: what is trained, for how long, and what the variants are compared with."""
    if baseline is None:
        return (f"{n_test} test reports; equal budget: arms {arms(params)} each train {params.graph.ablation_max_steps} "
                f"optimizer steps on every layer (SFT recipe of notebook 02 otherwise); compared with "
                f"{baseline_system(params)}")
    return (f"{n_test} test reports; 'sft' (no graph) predictions from {baseline['path']}; variants trained with "
            f"notebook 02's SFT settings: {arms(params)}")


def load_sft_baseline(params: Params, test: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``sft`` (no graph) system: its test predictions from notebook 05 and its training summary from 02.

    Raises:
        FileNotFoundError: notebook 02 or 05 has not been run for this params file.
        ValueError: the predictions do not cover the test split or were made with other settings.
    """
    out_dir = params.output_dir
    pred_file, sft_file = out_dir / "predictions" / "sft.jsonl", out_dir / "sft.json"
    for path, nb in ((sft_file, "02"), (pred_file, "05")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; run notebook {nb} first "
                                    f"(make reproduce MODEL={params.run.name} NOTEBOOKS='02 05')")
    rows = generation.read_predictions_jsonl(pred_file)
    by_id = {r["report_id"]: r for r in rows}
    missing = [str(r["report_id"]) for r in test if str(r["report_id"]) not in by_id]
    if missing:
        raise ValueError(f"{pred_file}: no prediction for {len(missing)} of {len(test)} test reports "
                         f"(first: {missing[0]}); re-run notebook 05")
    summary = json.loads(sft_file.read_text(encoding="utf-8"))
    # as checkpoints.load_finetuned names it
    adapter = str(Path("sft") / ("model" if params.sft.method == "full" else "adapter"))
    expected = generation.params_hash(params.gen, _sft_model_config(params, adapter))
    stale = sorted({by_id[str(r["report_id"])]["params_hash"] for r in test} - {expected})
    if stale:
        raise ValueError(f"{pred_file}: predictions were made with other settings (params_hash {stale[:3]}, "
                         f"expected {expected}); re-run notebooks 02 and 05")
    return {"predictions": [by_id[str(r["report_id"])]["prediction"] for r in test], "summary": summary,
            "path": str(pred_file)}


def train_variant(params: Params, variant: str, splits: Mapping[str, Any], *, log: LogFn | None = None):
    """Train one arm with :func:`sft_settings`; returns :class:`radimpress_lib.train.sft.SFTResult`."""
    import datasets  # heavy import, only when training

    folder = variant_dir(params, variant)
    sft_cfg = sft_settings(params)
    model, tokenizer, _info = checkpoints.load_base_model(params, padding_side="right")
    train = retrieval.with_prompt_context(params, splits["train"], splits["train"], graph_variant=variant)
    val = retrieval.with_prompt_context(params, splits["validate"], splits["train"], graph_variant=variant)
    if variant != "gnn":
        return sft.train_sft(model, tokenizer, datasets.Dataset.from_list(train), datasets.Dataset.from_list(val),
                             sft_cfg, folder, params.run.seed, log=log)
    return graph_sft.train_graph_prefix_sft(model, tokenizer, train, val, sft_cfg, params.graph, folder,
                                           params.run.seed, log=log)


def decode_variant(params: Params, variant: str, test: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]],
                   out_path: str | Path | None = None, *, log: LogFn | None = None) -> generation.GenerationResult:
    """Decode the test split with a trained variant (same prompt context it was trained with)."""

    folder = variant_dir(params, variant)
    base, tokenizer, _info = checkpoints.load_base_model(params)
    if variant != "gnn":
        if not (folder / "adapter").is_dir():
            raise FileNotFoundError(f"{folder / 'adapter'}: the {variant} variant is not trained; "
                                    "run train_variant first")
        model = checkpoints.apply_adapter(base, folder / "adapter", merge=True)
    else:
        model = graph_sft.load_graph_prefix_model(base, folder)
    records = retrieval.with_prompt_context(params, test, pool, graph_variant=variant)
    return generation.generate_impressions(
        model, tokenizer, records, params.gen, model_name=params.model.name,
        model_config={"model": params.model.name, "adapter": str(folder.relative_to(params.output_dir)),
                      "graph_variant": variant, "params": params.params_hash("sft", "graph")},
        out_path=out_path, log=log)


def ablation_table(scores: Mapping[str, Mapping[str, Any]], deltas: pd.DataFrame,
                   train: Mapping[str, Mapping[str, Any]], decode: Mapping[str, Mapping[str, Any]],
                   metrics: Sequence[str] = ABLATION_METRICS, baseline: str = "sft") -> pd.DataFrame:
    """One row per system: each metric with its 95% CI, the paired delta vs ``baseline`` (CI, p),
    training wall time, extra training time vs ``baseline`` and decoding time.

    Args:
        scores: ``evaluate_systems`` output holding ``baseline`` and the variants.
        deltas: :func:`radimpress_lib.evaluation.comparisons` of the variants against ``baseline``
            (columns ``system``, ``vs``, ``metric``, ``delta``, ``ci_low``, ``ci_high``, ``p_value``;
            ``delta`` = baseline - variant, flipped here to variant - baseline).
        train: per system, ``wall_time_s`` and ``tokens_per_s`` of its training run, and
            ``resumed_from`` (a checkpoint of an earlier run it resumed from: its time is then only
            that of the remaining steps, flagged ``resumed``, and no extra-time figure is computed).
        decode: per system, ``wall_time_s`` of its test decode (may lack systems).
        baseline: the no-graph system (:func:`baseline_system`).
    """
    base = train.get(baseline, {})
    # a run resumed from an earlier run's checkpoint timed only its last steps: no extra-time figure from it
    base_wall = None if base.get("resumed_from") else base.get("wall_time_s")
    rows = []
    for name, s in scores.items():
        row: dict[str, Any] = {"system": name}
        for m in metrics:
            ci = s.get(f"{m}_ci") or [None, None]
            row[m] = s.get(m)
            row[f"{m}_ci"] = f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci[0] is not None else ""
            if name != baseline:
                d = deltas[(deltas["vs"] == name) & (deltas["metric"] == m)]
                if len(d):
                    r = d.iloc[0]
                    row[f"{m}_delta"] = -r["delta"]
                    row[f"{m}_delta_ci"] = f"[{-r['ci_high']:.1f}, {-r['ci_low']:.1f}]"
                    row[f"{m}_p"] = r["p_value"]
        t = train.get(name, {})
        row["train_wall_s"] = t.get("wall_time_s")
        row["train_tok_per_s"] = t.get("tokens_per_s")
        row["resumed"] = bool(t.get("resumed_from"))
        if name == baseline:
            row["extra_train_s"] = 0.0
        elif base_wall and t.get("wall_time_s") is not None and not row["resumed"]:
            row["extra_train_s"] = t["wall_time_s"] - base_wall
        else:
            row["extra_train_s"] = None
        row["decode_wall_s"] = decode.get(name, {}).get("wall_time_s")
        rows.append(row)
    return pd.DataFrame(rows).set_index("system")


#: What the training table shows per system.
TRAIN_COLUMNS = ("wall_time_s", "tokens_per_s", "train_tokens", "final_eval_loss", "resumed_from")


def train_variants(params: Params, splits: Mapping[str, Any], baseline: Mapping[str, Any] | None, *,
                   log: LogFn | None = None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Train every arm of :func:`arms`; returns (results by variant, training table by system).

    ``baseline``: the read-back ``sft`` system (:func:`load_sft_baseline`) when the budget is not equal, else None.
    """
    train = {} if baseline is None else {"sft": {k: baseline["summary"].get(k) for k in TRAIN_COLUMNS}}
    results = {}
    for variant in arms(params):
        results[variant] = train_variant(params, variant, splits, log=log)
        train[system_name(variant, params)] = {k: getattr(results[variant], k) for k in TRAIN_COLUMNS}
    return results, train


def decode_variants(params: Params, test: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]],
                    predictions_dir: Path, baseline: Mapping[str, Any] | None, *,
                    log: LogFn | None = None) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Decode the test split with every trained arm; returns (drafts by system, the no-graph one first;
    decoding summaries)."""
    systems: dict[str, list[str]] = {} if baseline is None else {"sft": list(baseline["predictions"])}
    decode: dict[str, dict[str, Any]] = {}
    for variant in arms(params):
        name = system_name(variant, params)
        result = decode_variant(params, variant, test, pool, predictions_dir / f"{name}.jsonl", log=log)
        decode[name] = result.summary()
        systems[name] = [p["prediction"] for p in result.predictions]
    return systems, decode


def plot_losses(results: Mapping[str, Any], baseline: Mapping[str, Any] | None, params: Params):
    """Training loss per optimizer step of each trained arm (and of the read-back ``sft`` model, if any)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    curves = {system_name(v, params): r.loss_history for v, r in results.items()}
    if baseline is not None:
        curves["sft (no graph)"] = baseline["summary"].get("loss_history") or []
    for label, history in curves.items():
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], marker=".", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("completion-only cross-entropy")
    ax.set_title("SFT loss by graph variant")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_ablation(scores: Mapping[str, Mapping[str, Any]],
                  metrics: Sequence[str] = ("rougeL", "label_f1_micro", "graph_f1", "negation_flip_rate")):
    """One bar chart per metric, a bar per system with its 95% CI."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.3 * len(metrics), 3.4))
    names = list(scores)
    for ax, metric in zip(axes, metrics):
        values = [scores[n][metric] for n in names]
        ci = [scores[n][f"{metric}_ci"] for n in names]
        ax.bar(names, values, yerr=[[v - c[0] for v, c in zip(values, ci)], [c[1] - v for v, c in zip(values, ci)]],
               capsize=4, color=["#999999", "#4c72b0", "#dd8452"][: len(names)])
        ax.set_title(metric)
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle("Entity-graph ablation (test split, 95% CIs)")
    fig.tight_layout()
    return fig


def negation_disagreements(per: Mapping[str, Any], systems: Mapping[str, Sequence[str]],
                           test: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Test reports on which the systems differ in flipping a finding's status (graph negation flip)."""
    flips = pd.DataFrame({name: per[name].graph_flags[:, 1] for name in systems})  # columns: hallucinated, flip, omitted
    flips.insert(0, "findings", [r["findings"] for r in test])
    for name in systems:
        flips[f"{name}: impression"] = list(systems[name])
    return flips[flips[list(systems)].nunique(axis=1) > 1]

"""Model cards for fair models: method, paper, dataset, per-group and fairness metrics with
their confidence intervals, the training spec, and Hub metadata (``model-index``, tags)."""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .plugins import get_registry


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _method_facts(config: dict[str, Any]) -> tuple[str, str, str]:
    """(description, paper, stage) of the method, from its installed class when available."""
    entry = get_registry().entries["methods"].get(config["method"]["name"])
    cls = entry.obj if entry is not None else None
    return (getattr(cls, "description", "") or "", getattr(cls, "paper", "") or "", getattr(cls, "stage", "") or "")


def _eval_results(config: dict[str, Any], metrics: dict[str, Any]) -> list[EvalResult]:
    data = metrics.get("data", {})
    results = []
    for section in ("overall", "fairness"):
        for name, value in metrics.get(section, {}).items():
            if name == "n" or value is None:
                continue
            results.append(EvalResult(
                task_type="image-classification", dataset_type=config["data"]["name"], dataset_name=config["data"]["name"],
                dataset_split=data.get("split"), metric_type=name, metric_name=name, metric_value=round(value, 6),
            ))
    return results


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None, repo_id: str | None = None) -> ModelCard:
    method, data = config["method"], config["data"]
    description, paper, stage = _method_facts(config)
    name = repo_id or f"{method['name']}-{data['name']}-{config['model']['name']}"
    card_data = ModelCardData(
        library_name="fair",
        pipeline_tag="image-classification",
        tags=["fairness", "image-classification", f"fair-method-{method['name']}", f"dataset-{data['name']}"],
        datasets=[data["name"]],
        model_name=name,
        eval_results=_eval_results(config, metrics) if metrics else None,
    )
    lines = [
        f"# {name}",
        "",
        f"An image classifier (`{config['model']['name']}`) trained with the fairness method **{method['name']}**"
        + (f" ({stage})" if stage else "")
        + f" on **{data['name']}** to predict `{data['target']}`, evaluated across the protected attribute(s) "
        + ", ".join(f"`{s}`" for s in data["sensitive"]) + ". Made with the fair toolkit.",
        "",
        "## Method",
        "",
        f"{description or method['name']}." + (f" Paper: {paper}." if paper else ""),
        "",
        f"Parameters: `{json.dumps(method['params'])}`",
        "",
    ]
    if metrics:
        confidence = metrics.get("confidence")
        interval_title = f"{round(confidence * 100)}% CI" if confidence else "CI"
        split = metrics.get("data", {}).get("split", "test")
        lines += [f"## Evaluation ({split} split, n = {metrics['overall'].get('n', '?')})", "",
                  f"| metric | value | {interval_title} |", "|---|---:|---:|"]
        for section in ("overall", "fairness"):
            for metric, value in metrics.get(section, {}).items():
                if metric == "n":
                    continue
                ci = metrics.get("intervals", {}).get(metric)
                lines.append(f"| {metric} | {_fmt(value)} | {f'[{_fmt(ci[0])}, {_fmt(ci[1])}]' if ci else ''} |")
        lines += ["", "### Accuracy by group", "", "| group | n | accuracy |", "|---|---:|---:|"]
        lines += [f"| {g['group']} | {g['n']} | {_fmt(g['accuracy'])} |" for g in metrics.get("groups", [])]
        lines += ["", "`deo` is the equal-opportunity difference (TPR gap), `eod` the equalized-odds difference "
                  "(max of TPR and FPR gaps), `aaod` their average, `spd` the statistical parity difference; "
                  "confidence intervals are percentile bootstrap intervals.", ""]
    lines += [
        "## Use", "", "```python", "from fair_core import from_pretrained", "",
        f'model = from_pretrained("{repo_id or "path/to/this/folder"}")',
        "labels = model.predict(images)  # float tensor (N, 3, H, W) in [0, 1]",
        f"# classes: {list(data['class_names'])}", "```", "",
    ]
    if metrics and "spec" in metrics:
        lines += ["## Training spec", "", "```json", json.dumps(metrics["spec"], indent=2), "```", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))

"""Model cards for fair models: method, paper, dataset, per-group and fairness metrics with
their confidence intervals, the training spec, and Hub metadata (``model-index``, tags)."""

from __future__ import annotations

import json
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .plugins import get_registry
from .report import SIZE_KEYS


def _method_facts(config: dict[str, Any]) -> tuple[str, str, str]:
    """(description, paper, stage) of the method, from its installed class when available."""
    entry = get_registry().entries["methods"].get(config["method"]["name"])
    cls = entry.obj if entry is not None else None
    return (getattr(cls, "description", "") or "", getattr(cls, "paper", "") or "", getattr(cls, "stage", "") or "")


def _task(config: dict[str, Any]):
    """The installed task of the model (classification for configs written before tasks)."""
    from .hub import _task_section

    return get_registry().get("tasks", _task_section(config)["name"], "config.json task.name").obj()


def _eval_results(config: dict[str, Any], metrics: dict[str, Any], task_type: str) -> list[EvalResult]:
    data = metrics.get("data", {})
    dataset = data.get("dataset") if metrics.get("evaluation") and data.get("dataset") else config["data"]["name"]
    results = []
    for section in ("overall", "fairness"):
        for name, value in metrics.get(section, {}).items():
            if name in SIZE_KEYS or value is None:
                continue
            results.append(EvalResult(
                task_type=task_type, dataset_type=dataset, dataset_name=dataset,
                dataset_split=data.get("split"), metric_type=name, metric_name=name, metric_value=round(value, 6),
            ))
    return results


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None, repo_id: str | None = None) -> ModelCard:
    method, data = config["method"], config["data"]
    task = _task(config)
    description, paper, stage = _method_facts(config)
    name = repo_id or f"{method['name']}-{data['name']}-{config['model']['name']}"
    card_data = ModelCardData(
        library_name="fair",
        pipeline_tag=task.pipeline_tag or None,
        tags=["fairness", *([task.pipeline_tag] if task.pipeline_tag else []), f"fair-task-{task.name}",
              f"fair-method-{method['name']}", f"dataset-{data['name']}"],
        datasets=[data["name"]],
        model_name=name,
        eval_results=_eval_results(config, metrics, task.pipeline_tag or task.name) if metrics else None,
    )
    noun = task.model_noun
    lines = [
        f"# {name}",
        "",
        f"{'An' if noun[0] in 'aeiou' else 'A'} {noun} (`{config['model']['name']}`) trained with the fairness method "
        f"**{method['name']}**" + (f" ({stage})" if stage else "")
        + f" on **{data['name']}**{task.card_target(data)}, evaluated across the protected attribute(s) "
        + (", ".join(f"`{s}`" for s in data["sensitive"]) or "(none: by class only)") + ". Made with the fair toolkit.",
        "",
        "## Method",
        "",
        f"{description or method['name']}." + (f" Paper: {paper}." if paper else ""),
        "",
        f"Parameters: `{json.dumps(method['params'])}`",
        "",
    ]
    evaluated = bool(metrics and metrics.get("evaluation"))
    if metrics:
        split = metrics.get("data", {}).get("split", "test")
        where = f" on {metrics['data']['dataset']}" if evaluated and metrics.get("data", {}).get("dataset") else ""
        lines += [f"## Evaluation{where} ({split} split, n = {metrics['overall'].get('n', '?')})", ""]
        if evaluated:
            lines += [f"Measured by `fair evaluate` of the model above (sha256 of its weights "
                      f"`{str(metrics['evaluation'].get('source', {}).get('sha256', '?'))[:16]}`).", ""]
        lines += [*task.card_lines(metrics), ""]
    lines += ["## Use", "", "```python", *task.usage_lines(repo_id or "path/to/this/folder", config), "```", ""]
    if metrics and "spec" in metrics:
        lines += [f"## {'Evaluation' if evaluated else 'Training'} spec", "", "```json", json.dumps(metrics["spec"], indent=2),
                  "```", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))

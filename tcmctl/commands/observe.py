"""Watching commands: events (one line per event, --follow to stream), metrics, usage."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click
import orjson

from tcmctl import render
from tcmctl.context import Ctx, json_option, pass_ctx

FOLLOW_WAIT_MS = 30_000  # one long poll; the daemon answers at once when there is news
_FIXED = ("seq", "time", "kind")


@click.command()
@click.option(
    "--since",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Show events after this seq.",
)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events (Ctrl-C ends).")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="At most this many events (per poll with --follow).",
)
@json_option
@pass_ctx
def events(obj: Ctx, since: int, follow: bool, limit: int) -> None:
    """Print the daemon's events: state changes, health verdicts, recoveries, jobs."""
    params: dict[str, Any] = {"since": since, "limit": limit}
    if follow:
        params.update(follow=True, waitMs=FOLLOW_WAIT_MS)
    line = _json_line if obj.json else _human_line
    try:
        while True:
            result = obj.call("events", params, timeout_s=FOLLOW_WAIT_MS / 1000 + 30)
            for event in result["events"]:
                click.echo(line(event))
            if not follow:
                return
            params["since"] = result["lastSeq"]
    except KeyboardInterrupt:
        return  # Ctrl-C is how --follow ends: a normal exit


def _json_line(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def _human_line(event: dict[str, Any]) -> str:
    """``seq time kind key=value…``; a value with spaces or quotes is JSON-quoted."""
    when = datetime.fromtimestamp(event.get("time", 0)).isoformat(timespec="milliseconds")
    parts = [str(event.get("seq")), when, str(event.get("kind"))]
    for key, value in event.items():
        if key in _FIXED:
            continue
        if isinstance(value, dict):
            text = orjson.dumps(value).decode()
        else:
            text = render.cell(value)
            if not text or any(c.isspace() or c in "\"'=" for c in text):
                text = orjson.dumps(text).decode()
        parts.append(f"{key}={text}")
    return " ".join(parts)


@click.command()
@click.option("--prometheus", is_flag=True, help="The Prometheus text format (for scrapers).")
@click.option("--all-nodes", is_flag=True, help="Every node sharing this Redis, and the sums.")
@json_option
@pass_ctx
def metrics(obj: Ctx, prometheus: bool, all_nodes: bool) -> None:
    """Task, queue, health and recovery metrics."""
    fmt = "prometheus" if prometheus else "json"
    params = {"format": fmt, "allNodes": all_nodes or None}
    if prometheus and not obj.json:
        click.echo(obj.call("metrics", params)["text"], nl=False)
        return
    result = obj.call("metrics", params)
    obj.emit(result, lambda r: _render_metrics(r["metrics"]))


def _render_metrics(snapshot: dict[str, Any]) -> str:
    """One line per sample: ``name{labels}  value``; histograms as count, sum and mean."""
    rows = []
    for name, metric in snapshot.items():
        for sample in metric["samples"]:
            labels = ",".join(f"{k}={v}" for k, v in sample["labels"].items())
            series = f"{name}{{{labels}}}" if labels else name
            if metric["type"] == "histogram":
                mean = sample["sum"] / sample["count"] if sample["count"] else 0.0
                total = render.cell(float(sample["sum"]))
                value = f"count={sample['count']} sum={total} mean={render.cell(mean)}"
            else:
                value = render.cell(sample["value"])
            rows.append({"series": series, "value": value})
    return render.table(rows, ["series", "value"], max_width=100)


@click.command()
@click.option("--run", "run_id", help="The specialists of one run (run_N).")
@click.option("--tree", help="An executive and everything below it (exec_N).")
@click.option("--manager", "manager_id", help="A manager and its specialists.")
@click.option("--instance", "instance_id", help="One instance.")
@json_option
@pass_ctx
def usage(
    obj: Ctx,
    run_id: str | None,
    tree: str | None,
    manager_id: str | None,
    instance_id: str | None,
) -> None:
    """Tokens and estimated cost (of the whole daemon unless a scope is named)."""
    if sum(x is not None for x in (run_id, tree, manager_id, instance_id)) > 1:
        raise click.UsageError("give at most one of --run, --tree, --manager, --instance")
    params = {"runId": run_id, "tree": tree, "managerId": manager_id, "instanceId": instance_id}
    obj.emit(obj.call("usage", params), _render_usage)


def _cost(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.4f}"


def _render_usage(r: dict[str, Any]) -> str:
    """Totals by kind, the estimated cost (and what it leaves out), then one row per model."""
    t = r["tokens"]
    cost = _cost(r["costUsd"])
    if r["unpricedModels"] and r["costUsd"] is not None:
        cost += f" + unknown for {', '.join(r['unpricedModels'])} (no price: see TCM_PRICES)"
    elif r["unpricedModels"]:
        cost += f" (no price for {', '.join(r['unpricedModels'])}: see TCM_PRICES)"
    pairs: list[tuple[str, Any]] = [
        ("scope", f"{r['scope']} {r['id'] or ''}".strip()),
        ("tokens", t["total"]),
        ("input", t["input"]),
        ("output", t["output"]),
        ("cache creation", t["cacheCreation"]),
        ("cache read", t["cacheRead"]),
        ("estimated cost", cost),
        ("instances", r["instances"]),
    ]
    if budget := r.get("budget"):
        limits = [f"{k}={v}" for k, v in budget.items() if k != "reached" and v is not None]
        pairs.append(
            (
                "budget",
                " ".join(limits) + (f" ({budget['reached']})" if budget.get("reached") else ""),
            )
        )
    out = render.pairs(pairs)
    if r["models"]:
        rows = [
            {"model": m["model"], "tokens": m["tokens"]["total"], "input": m["tokens"]["input"],
             "output": m["tokens"]["output"], "cacheCreation": m["tokens"]["cacheCreation"],
             "cacheRead": m["tokens"]["cacheRead"], "costUsd": _cost(m["costUsd"])}
            for m in r["models"]
        ]  # fmt: skip
        cols = ["model", "tokens", "input", "output", "cacheCreation", "cacheRead", "costUsd"]
        out += "\n\n" + render.table(rows, cols)
    return out


COMMANDS = [events, metrics, usage]

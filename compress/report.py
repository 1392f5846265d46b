"""Writing a run's reports: ``report.json`` (the records), ``report.md`` and ``report.html`` (renderings).

The records live in :mod:`compress.records`; every number's text comes from :mod:`compress.render`.
"""

from __future__ import annotations

from pathlib import Path

from compress.checkpoint import atomic_write
from compress.html import write_html
from compress.records import RunReport
from compress.render import (ENERGY_BATCH_HEADERS, MIXED_HEADERS, PRUNE_HEADERS, TABLE_HEADERS, carbon_sentence,
                             energy_batch_rows, energy_method_text, headline, markdown_table, mixed_precision,
                             pruning_allocation, ratio_note, table_rows)


def render_markdown(report: RunReport) -> str:
    final = report.deployed()
    m = final.metrics
    lines = [f"# compress run: {report.model} on {report.dataset['name']}", "", headline(report), "",
             markdown_table(TABLE_HEADERS, table_rows(report)), "", ratio_note(report), "",
             f"Latency: batch {m.latency_batch}, {m.threads} thread(s), median and p90 of {m.latency_runs} runs after "
             f"warm-up, on the CPU. Throughput at batch {m.throughput_batch}. Accuracy on the full held-out split "
             f"({report.dataset['test_images']} images).",
             f"Energy per inference: {energy_method_text(report.steps)}.", ""]
    carbon = carbon_sentence(report)
    if carbon:
        lines.append(carbon)
    by_batch = energy_batch_rows(report)
    if by_batch:
        lines += ["", "Energy per inference (one image) by batch size, the deployed model against both references "
                  "(batch 1: each model's own measurement; 8 and 32: the same energy loop on a batch of test images):",
                  "", markdown_table(ENERGY_BATCH_HEADERS, by_batch)]
    env = report.environment
    lines += ["", f"Environment: {env['cpu']} ({env['cores']} cores, {env['machine']}), Python {env['python']}, "
              + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v) + "."]
    pruning = pruning_allocation(report)
    if pruning:
        lines += ["", "## Where pruning spent its budget", "", pruning[0], "", "The scan's most sensitive groups:", "",
                  markdown_table(PRUNE_HEADERS, pruning[1])]
    mixed = mixed_precision(report)
    if mixed:
        lines += ["", "## INT8 mixed precision", "", mixed[0]]
        if mixed[1]:
            lines += ["", "The ten nodes that lose the most fidelity (SQNR against the FP32 model, on the node's "
                      "output):", "", markdown_table(MIXED_HEADERS, mixed[1])]
    warnings = [(s.step, w) for s in report.steps for w in s.warnings]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- **{step}**: {w}" for step, w in warnings]
    notes = [(s.step, k, v) for s in report.steps for k, v in s.notes.items() if k != "cache"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{step}** {k}: {v}" for step, k, v in notes]
    return "\n".join(lines) + "\n"


def write_reports(report: RunReport, run_dir: Path) -> None:
    """report.json, then its renderings; each file written atomically."""
    atomic_write(run_dir / "report.json", lambda p: p.write_text(report.to_json()))
    write_renderings(report, run_dir)


def write_renderings(report: RunReport, run_dir: Path) -> None:
    """report.md and report.html (with plots/*.png) from the records; report.json is left as it is (an older
    schema stays older: ``compress report`` never rewrites its source)."""
    atomic_write(run_dir / "report.md", lambda p: p.write_text(render_markdown(report)))
    write_html(report, run_dir)

"""One `Table` in three forms: Markdown, a rich table for the console, an HTML table; and the summary's tables
as `summary.md` and as the console group."""

from __future__ import annotations

import html

from rich import box
from rich.console import Group
from rich.table import Table as RichTable
from rich.text import Text

from sami.report.tables import Table, all_tables
from sami.run_files import Summary, as_summary


def escape(value: object) -> str:
    """HTML-escaped text ("" for None)."""
    return html.escape("" if value is None else str(value))


def gaps(summary: Summary | dict) -> list[str]:
    """What is missing or unreadable in the run folder, one line each."""
    summary = as_summary(summary)
    out = list(summary.problems)
    for it in summary.iterations:
        t = it.iteration
        entries = [(it, f"iter-{t}"), *((c, f"iter-{t} {m}") for m, c in it.comparisons.items())]
        for entry, who in entries:
            out += [f"iter-{t}/{m}: missing" for m in entry.missing]  # paths relative to iter-T/
            out += [f"{who}: {n}" for n in entry.notes]
    return out


# ---- one table -------------------------------------------------------------------------------------------------


def table_markdown(table: Table) -> list[str]:
    """The table as Markdown lines: a heading, the table (or its `empty` line) and its note."""
    lines = ["", f"## {table.title}", ""]
    if not table.rows:
        return lines + [table.empty or "nothing yet"]
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines.append("| " + " | ".join(cell(c.name) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" if c.left else "---:" for c in table.columns) + "|")
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in table.rows]
    return lines + (["", table.note] if table.note else [])


def table_rich(table: Table):
    """The table as a compact `rich.table.Table` (without its detail columns)."""
    keep = [i for i, c in enumerate(table.columns) if not c.detail]
    out = RichTable(title=table.title, box=box.SIMPLE_HEAD, pad_edge=False)
    for i in keep:
        c = table.columns[i]
        out.add_column(c.name, justify="left" if c.left else "right", overflow="fold")
    for row in table.rows:
        out.add_row(*(row[i] for i in keep))
    return out


def table_html(table: Table) -> str:
    """The table as a titled card of HTML (cells escaped)."""
    head = "".join(f"<th{' class=l' if c.left else ''}>{escape(c.name)}</th>" for c in table.columns)
    if table.rows:
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=l' if c.left else ''}>{escape(x)}</td>" for c, x in zip(table.columns, row, strict=True)
            )
            + "</tr>"
            for row in table.rows
        )
        content = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    else:
        content = f"<div class='empty'>{escape(table.empty or 'nothing yet')}</div>"
    note = f"<p class='muted'>{escape(table.note)}</p>" if table.note else ""
    return f"<h2>{escape(table.title)}</h2><div class='card'>{content}{note}</div>"


# ---- the summary -----------------------------------------------------------------------------------------------


def render_markdown(summary: Summary | dict) -> str:
    """The report's tables as Markdown (`summary.md`)."""
    summary = as_summary(summary)
    run = summary.run
    lines = [f"# SAMI run: {run.name or ''}"]
    if run.model:
        lines += ["", f"Model: `{run.model}`"]
    for table in all_tables(summary):
        lines += table_markdown(table)
    missing = gaps(summary)
    if missing:
        lines += ["", "Missing or incomplete:", *[f"- {g}" for g in missing]]
    return "\n".join(lines) + "\n"


def summary_table(summary: Summary | dict):
    """The report's main tables for the console: a `rich` renderable (print it with a `rich.console.Console`)."""
    summary = as_summary(summary)
    tables = [table_rich(t) for t in all_tables(summary) if t.console and t.rows]
    return Group(Text(f"SAMI run: {summary.run.name or ''}", style="bold"), *tables)

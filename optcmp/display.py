"""The summary as a person reads it: a terminal table that fits the width, and summary.md.

Columns are chosen by rules, not from a list, so a column the aggregation adds later finds
its place: `<m>_mean` (with `<m>_std`) is a metric shown as `mean ± std`; other `<m>_…`
columns (the 95% interval bounds, …) are statistics of that metric, kept for summary.csv
and `--wide`; dotted names (and `variant`) are the swept keys; everything else (decay, n,
status, …) is shown as it is.

The terminal table keeps what carries information, in the order the experiment asks:
- a column with the same text in every row says nothing about the ranking; its value goes
  to a line under the table instead ("same for all: …");
- timings shared by a vectorized group (every member gets the group's rate) are dropped;
- then columns are taken by priority (the ranking metric, the metric the swept keys ask
  about, the statuses when they differ, …, the swept values last, since the config id
  already names them) as long as the table fits the width; the rest are named as hidden.
Config ids are never cut: if even `#`, `config` and the ranking metric do not fit, each
config is printed as a block of lines instead of a table row.

No torch, numpy or pandas here; rich only inside the functions that draw.
"""
from __future__ import annotations

import functools
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any

# What a swept key asks, by the key's last part: a weight-decay sweep asks what decay does
# to the weights; a learning-rate or schedule sweep asks how far and how steadily the loss
# goes down; a batch-size sweep also asks how fast.
_WEIGHTS = ("weight_norm", "near_zero_frac")
_CONVERGENCE = ("best_{primary}", "{primary}_tail")
QUESTION = {
    "weight_decay": _WEIGHTS, "no_decay": _WEIGHTS, "decay": _WEIGHTS,
    "lr": _CONVERGENCE, "momentum": _CONVERGENCE, "betas": _CONVERGENCE, "eps": _CONVERGENCE,
    "scheduler": _CONVERGENCE, "warmup_steps": _CONVERGENCE, "warmup_epochs": _CONVERGENCE,
    "batch_size": ("steps_per_second",),
}
# The metrics after the ranking one and the question's, most telling first; a metric not
# listed comes after these, then the machine's timings and counts.
GENERAL = (
    "val_loss_tail", "val_loss", "val_accuracy_tail", "val_accuracy", "train_loss_tail", "train_loss",
    "train_accuracy", "weight_norm", "near_zero_frac", "best_val_loss", "best_val_accuracy",
    "best_train_loss", "best_train_accuracy",
)
# Measurements of the machine, not of the optimizer: last, and dropped when a vectorized
# group shares them.
TIMING = ("steps", "seconds", "steps_per_second", "group_size")
RATES = ("seconds", "steps_per_second")  # a vectorized group's, the same for its members
LAST = ("n", "runs", "status", "diverged", "diverged_frac", "chaotic")  # shown after the metrics
PARAM_LIKE = ("variant",)  # sweep axes whose name has no dot
_LEFT = ("config", "decay", "status", "role", "variant")


def missing(value: Any) -> bool:
    """An empty cell: None, or NaN (a DataFrame's way of saying the same)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def significant(x: float, digits: int = 4) -> str:
    """`x` with `digits` significant digits, in plain notation from 1e-4 to 1e5."""
    if missing(x):
        return "–"
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if float(x).is_integer() and abs(x) < 1e5:  # a count (steps), or an accuracy of 1
        return str(int(x))
    exponent = math.floor(math.log10(abs(x)))
    if not -4 <= exponent < 5:
        return f"{x:.{digits - 1}e}"
    place = exponent - digits + 1  # the last digit kept, as a power of ten
    rounded = round(x, -place)
    return f"{rounded:.{max(0, -place)}f}"


def with_uncertainty(mean: float, std: float | None) -> str:
    """`mean ± std` with the std to two significant digits and the mean to the same place:
    `3.34 ± 0.42`, `150 ± 110`, `(4.94 ± 0.24)e-3`. No std: the mean to 4 digits."""
    if missing(mean):
        return "–"
    if missing(std) or not math.isfinite(std) or not math.isfinite(mean):
        return significant(mean)
    if std == 0:
        return f"{significant(mean)} ± 0"
    scale = max(abs(mean), std)
    if scale < 1e-3 or scale >= 1e5:  # a common power of ten instead of a row of zeros
        e = math.floor(math.log10(scale))
        return f"({with_uncertainty(mean / 10**e, std / 10**e)})e{e}"
    place = math.floor(math.log10(std)) - 1  # the std's second significant digit
    if round(std, -place) >= 10 ** (place + 2):  # 0.996 rounds to 1.0: still two digits
        place += 1
    decimals = max(0, -place)
    return f"{round(mean, -place):.{decimals}f} ± {round(std, -place):.{decimals}f}"


def plain(value: Any) -> str:
    """A cell as text: a number to 4 significant digits, a list joined, nothing as `–`."""
    if missing(value):
        return "–"
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(map(plain, value))
    return str(value)


@dataclass(eq=False)
class Column:
    header: str
    cells: list[str]
    kind: str  # id | param | metric | other | stat
    key: str  # the summary column (for a metric: its name)
    priority: float = 0.0

    @property
    def left(self) -> bool:
        return self.kind in ("id", "param") or self.key in _LEFT

    @property
    def constant(self) -> bool:
        return len(set(self.cells)) <= 1


@dataclass
class Layout:
    """The columns a view shows, in display order, and what it says under the table."""

    columns: list[Column]
    same: list[Column] = field(default_factory=list)  # constant: said once, under the table
    hidden: list[Column] = field(default_factory=list)  # left out for the width
    shared: list[Column] = field(default_factory=list)  # timings a vectorized group shares
    duplicates: list[tuple[Column, Column]] = field(default_factory=list)  # (left out, same as this)


def _metrics(columns: list[str]) -> list[str]:
    return [c[: -len("_mean")] for c in columns if c.endswith("_mean")]


def _owner(column: str, metrics: list[str]) -> str | None:
    """The metric a statistic column belongs to (`val_loss_ci95_low` → `val_loss`), the
    longest name that fits so `train_loss_tail_std` is `train_loss_tail`'s."""
    owners = [m for m in metrics if column.startswith(m + "_")]
    return max(owners, key=len) if owners else None


def short_key(key: str, keys: list[str]) -> str:
    """A swept key's header: its last part (`optimizer.weight_decay` → `weight_decay`), the
    part before for a name (`optimizer.name` → `optimizer`), longer when two would clash."""
    def tail(k: str, n: int) -> str:
        parts = k.split(".")
        if parts[-1] in ("name", "kind") and len(parts) > 1:
            parts = parts[:-1]
        return ".".join(parts[-n:])

    for n in range(1, key.count(".") + 2):
        mine = tail(key, n)
        if all(tail(k, n) != mine for k in keys if k != key):
            return mine
    return key


def asked_by(params: list[str], primary: str | None) -> list[str]:
    """The metrics the swept keys ask about (`QUESTION`), for ranking metric `primary`."""
    base = (primary or "").removeprefix("best_").removesuffix("_tail")
    wanted = [q for p in params for q in QUESTION.get(p.split(".")[-1], ())]
    if any(p.startswith("scheduler.") for p in params):
        wanted += _CONVERGENCE
    return list(dict.fromkeys(q.format(primary=base) for q in wanted))


def metric_order(metrics: list[str], primary: str | None, params: list[str]) -> list[str]:
    """The ranking metric, then what the swept keys ask about, then the rest (`GENERAL`,
    metrics not listed there, `TIMING`)."""
    wanted = [primary, *asked_by(params, primary), *GENERAL, *(m for m in metrics if m not in TIMING), *TIMING]
    return [m for m in dict.fromkeys(wanted) if m in metrics]


def columns_of(table) -> list[Column]:
    """Every column of a summary (anything with `columns`, `rows` and `primary`), formatted,
    in display order, each with its priority (lower: kept first when the width is short)."""
    names, rows, primary = list(table.columns), table.rows, table.primary
    metrics = _metrics(names)
    stats = {f"{m}_{s}" for m in metrics for s in ("mean", "std")}
    params = [c for c in names if c not in stats and (("." in c and not _owner(c, metrics)) or c in PARAM_LIKE)]
    rest = [c for c in names if c not in stats and c not in params and c not in ("rank", "config_id")]
    # a statistic of a plain column (diverged_frac's Wilson interval) belongs to it, as a metric's do
    interval = lambda c: c.endswith(("_ci95_low", "_ci95_high")) and c.rsplit("_ci95_", 1)[0] in names  # noqa: E731
    # a column no config has a value in (chaotic where nothing was probed) says nothing
    others = [c for c in rest if not _owner(c, metrics) and not interval(c) and not all(missing(r.get(c)) for r in rows)]
    asked = set(asked_by(params, primary))

    def column(header: str, key: str, kind: str, priority: float, cell=None) -> Column:
        cell = cell or (lambda r: plain(r.get(key)))
        return Column(header, [cell(r) for r in rows], kind, key, priority)

    cols = [column("#", "rank", "id", 0), column("config", "config_id", "id", 0)]
    # a swept value as it was written (0.01, not 0.01000); the config id names it too
    cols += [column(short_key(p, params), p, "param", 5, lambda r, p=p: _as_given(r.get(p))) for p in params]
    cols += [column(c, c, "other", 3, (lambda r: _DECAY.get(r.get("decay"), plain(r.get("decay")))) if c == "decay" else None)
             for c in others if c not in LAST]
    for i, m in enumerate(metric_order(metrics, primary, params)):
        priority = 0 if m == primary else 2 if m in asked else 6 if m in TIMING else 4 + i / 100
        cols.append(column(m, m, "metric", priority, lambda r, m=m: with_uncertainty(r.get(f"{m}_mean"), r.get(f"{m}_std"))))
    # the diverged count and share are in `status` already ("2 ok, 1 diverged"): files and --wide only
    cols += [column(c, c, "stat" if c in _IN_STATUS else "other", 6 if c == "runs" else 7 if c in _IN_STATUS else 1)
             for c in LAST if c in others]
    # a metric's other statistics (its 95% interval bounds are summary.csv's alone: they
    # follow from mean, std and n)
    cols += [column(c, c, "stat", 7) for c in rest if _owner(c, metrics) and not c.endswith(("_ci95_low", "_ci95_high"))]
    return cols


_DECAY = {"coupled": "coupled (L2)"}
_IN_STATUS = ("diverged", "diverged_frac")


def _as_given(value: Any) -> str:
    return "–" if missing(value) else repr(value) if isinstance(value, float) else plain(value)


def _shared_by_group(table, metric: str) -> bool:
    """A timing the members of a vectorized group share: a group larger than one, or no
    seed-to-seed variation at all (a sequential run's rate always varies)."""
    if any((r.get("group_size_mean") or 0) > 1 for r in table.rows):
        return True
    spreads = [r.get(f"{metric}_std") for r in table.rows if (r.get("n") or 0) >= 2]
    return bool(spreads) and all(s == 0 for s in spreads)


def wide_layout(table) -> Layout:
    """Every column: summary.md and `--wide`."""
    return Layout(columns_of(table))


def _informative(table) -> tuple[list[Column], list[Column], Layout]:
    """The columns worth a place in a narrow view, most important first, and a Layout
    holding the rest: constant ones (`same`), group timings (`shared`), and columns that
    read the same as a more important one in every row (`duplicates`: runs = n when all
    finished, best_train_loss = train_loss when the last step was the best)."""
    cols = columns_of(table)
    many = len(table.rows) > 1
    left_out = Layout([])
    wanted = []
    for c in sorted((c for c in cols if c.kind != "stat"), key=lambda c: c.priority):
        twin = next((w for w in wanted if w.kind == c.kind and w.cells == c.cells), None)
        if c.kind == "id" or (c.kind == "metric" and c.key == table.primary):  # always shown
            wanted.append(c)
        elif c.kind == "metric" and c.key in RATES and _shared_by_group(table, c.key):
            left_out.shared.append(c)
        elif c.constant and (many or c.kind in ("param", "other")):
            left_out.same.append(c)
        elif twin is not None:
            left_out.duplicates.append((c, twin))
        else:
            wanted.append(c)
    left_out.same.sort(key=cols.index)
    return cols, wanted, left_out


def narrow_layout(table, fits) -> Layout | None:
    """The columns that carry information, by priority while `fits(columns)` says the table
    fits; None when not even `#`, `config` and the ranking metric do."""
    cols, wanted, layout = _informative(table)
    mandatory = [c for c in wanted if c.kind == "id" or (c.kind == "metric" and c.key == table.primary)]
    if not fits(mandatory):
        return None
    chosen = list(mandatory)
    for c in wanted:
        if c not in chosen:
            (chosen if fits([*chosen, c]) else layout.hidden).append(c)
    layout.columns = [c for c in cols if c in chosen]
    return layout


def _wrap(entries: list[str], width: int, first: str = "", indent: str = "  ", sep: str = " · ") -> list[str]:
    """Entries joined by `sep` into lines of at most `width` (after `first`, then `indent`),
    never breaking an entry; a comma separator stays at the end of a broken line."""
    lines, line, empty = [], first, True
    end = sep.rstrip() if sep.strip() == "," else ""
    for entry in entries:
        if len(line) + len(sep) * (not empty) + len(entry) + len(end) > width and line.strip():
            lines.append(line.rstrip() + (end if not empty else ""))
            line, empty = indent, True
        line += ("" if empty else sep) + entry
        empty = False
    if not empty:
        lines.append(line.rstrip())
    return lines


def notes(layout: Layout, width: int, more: str = "--wide shows all") -> list[str]:
    """The lines under a narrow table: what every config shares, what is not shown."""
    lines = []
    if layout.same:
        same = [c.cells[0] if c.key == "status" else f"{c.header} {c.cells[0].removesuffix(' ± 0') if c.cells else '–'}"
                for c in layout.same if c.key != "runs" or "n" not in {s.key for s in layout.same}]
        lines += _wrap(same, width, "same for all: ")
    left_out = [c.header for c in layout.hidden] + [f"{c.header} (= {twin.header})" for c, twin in layout.duplicates]
    if layout.shared:
        left_out.append(f"{', '.join(c.header for c in layout.shared)} (per vectorized group)")
    if left_out:
        lines += _wrap(left_out, width, f"not shown ({more}): ", sep=", ")
    return lines


def markdown(table) -> str:
    """summary.md: every column (the interval bounds are in summary.csv)."""
    cols = wide_layout(table).columns
    head = "| " + " | ".join("rank" if c.key == "rank" else c.key if c.kind == "param" else c.header for c in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(c.cells[i].replace("|", "\\|") for c in cols) + " |" for i in range(len(table.rows))]
    ranked = f"Ranked by {table.ranked_by} (mean over seeds)" if table.ranked_by else "Not ranked"
    note = f"{ranked}; ± is the standard deviation over seeds, n the seeds that finished ok; 95% intervals in summary.csv.\n"
    notes_ = "".join(f"\n{_sentence_case(n)}.\n" for n in table.notes)
    return "\n".join([head, sep, *body]) + "\n\n" + note + notes_


def _sentence_case(note: str) -> str:
    """A note as a sentence: capitalized, unless it begins with a metric's name (`val_loss is …`)."""
    first = note.split(" ", 1)[0]
    return note if "_" in first else note[:1].upper() + note[1:]


# --- drawing (rich) -----------------------------------------------------------------


def rich_table(columns: list[Column]):
    """A rich Table of the columns; cells are Text, so `[` in an id is never markup."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(header_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    for c in columns:
        table.add_column(Text(c.header), justify="left" if c.left else "right", no_wrap=True)
    for i in range(len(columns[0].cells) if columns else 0):
        table.add_row(*(Text(c.cells[i]) for c in columns))
    return table


COLUMN_GAP = 3  # between two columns of `rich_table`: a space of padding, the divider, a space


def table_width(columns: list[Column]) -> int:
    """The width `rich_table(columns)` takes when nothing is wrapped: each column's own
    width (rich's measure of it alone, remembered) and a gap between two. The narrow
    layout asks this for every column it tries; rich measuring whole tables each time was
    0.09 s of a 16-config summary. tests/test_display.py checks it against rich's measure
    of whole tables."""
    return sum(_column_width(c.header, tuple(c.cells)) for c in columns) + COLUMN_GAP * max(len(columns) - 1, 0)


@functools.lru_cache(maxsize=4096)
def _column_width(header: str, cells: tuple[str, ...]) -> int:
    from rich.console import Console
    from rich.measure import Measurement

    console = Console(width=100_000)
    return Measurement.get(console, console.options, rich_table([Column(header, list(cells), "other", "")])).maximum


def stacked(table, width: int) -> list[str]:
    """One block per config when not even a table of ids fits: the id whole on its own line,
    then `metric value` entries, most important first, wrapped at `width`."""
    _, wanted, layout = _informative(table)
    shown = [c for c in wanted if c.kind != "id"]
    lines = []
    for i, row in enumerate(table.rows):
        lines.append(f"{plain(row.get('rank'))}  {plain(row.get('config_id'))}")
        lines += _wrap([f"{c.header} {c.cells[i]}" for c in shown], width, "  ")
    return lines + notes(Layout([], layout.same, [], layout.shared, layout.duplicates), width)


def title(name: str, table) -> str:
    """The summary's heading: what it is ranked by, or that it is not ranked (one seed)."""
    return f"{name}: ranked by {table.ranked_by}" if table.ranked_by else f"{name}: not ranked"


def summary_view(table, width: int, wide: bool = False, title: str | None = None):
    """The summary for a terminal `width` columns wide (`wide`: every column, however wide):
    a title line, the table (or blocks, `stacked`), and the lines under it."""
    from rich.console import Group
    from rich.text import Text

    heading = [Text(title, style="bold")] if title else []
    # "2.2 %" stays on one line: wrapped with a no-break space, shown with a space
    said = [Text(line.replace("\u00a0", " ")) for note in table.notes
            for line in textwrap.wrap(note.replace(" %", "\u00a0%"), width, subsequent_indent="  ")]
    if wide:
        return Group(*heading, rich_table(wide_layout(table).columns), *said)
    layout = narrow_layout(table, lambda cols: table_width(cols) <= width)
    if layout is None:
        return Group(*heading, *(Text(line) for line in stacked(table, width)), *said)
    return Group(*heading, rich_table(layout.columns), *(Text(line) for line in notes(layout, width)), *said)


def view_width(table, width: int, wide: bool) -> int:
    """The width to draw at: `width`, or for `wide` the whole table's when that is more
    (its lines are then longer than the terminal, on purpose)."""
    return max(width, table_width(wide_layout(table).columns)) if wide else width


def render_text(renderable, width: int) -> str:
    """What a terminal `width` columns wide shows, as plain text (for tests and the API)."""
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False,
                      legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def html_table(columns: list[Column]) -> str:
    """The columns as an HTML table (class `table`), text escaped, numbers right-aligned."""
    import html

    def cell(tag: str, c: Column, text: str) -> str:
        return f'<{tag} class="{"l" if c.left else "r"}">{html.escape(text)}</{tag}>'

    head = "".join(cell("th", c, c.key if c.kind == "param" else c.header) for c in columns)
    rows = "".join("<tr>" + "".join(cell("td", c, c.cells[i]) for c in columns) + "</tr>"
                   for i in range(len(columns[0].cells) if columns else 0))
    return f'<table class="table"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def html_summary(table, width: int | None = None, more: str = "every column below") -> str:
    """The summary as HTML: every column (`width` None), or what a `width`-character table
    would show, with the lines under it as paragraphs."""
    import html

    layout = None if width is None else narrow_layout(table, lambda cols: table_width(cols) <= width)
    if layout is None:
        return html_table(wide_layout(table).columns)
    return html_table(layout.columns) + "".join(f'<p class="note">{html.escape(line)}</p>' for line in notes(layout, width, more))

"""`optcmp compare` as a person reads it: what the seeds allow first (one seed, chaos), then one
line per pair (its verdict and, where it is not significant, the smallest difference its seeds
could detect), then a table of the pairs fitted to the terminal's width. No torch; rich only
inside the functions that draw."""
from __future__ import annotations

from optcmp.display import Column, rich_table, table_width
from optcmp.summary import read_rounds


def compare_lines(frame, notes: list[str], exp_dir=None) -> list[str]:
    """The lines before the table: `notes` (`compare.compare_notes`), what `seeds: auto` decided
    where it chose the seeds of `exp_dir`, then "• " and each pair's sentence, with its
    `power_sentence` after it where the pair is not significant. One line each (`wrapped` fits them
    to a terminal)."""
    lines = list(notes)
    rounds = None if exp_dir is None else read_rounds(exp_dir)
    if rounds is not None:
        lines.append(f"seeds: auto chose these {rounds.get('seeds')} seeds: {rounds.get('sentence')}; its verdicts "
                     "(rounds.json) hold that error rate, the tests below are one more look at alpha 0.05")
    for row in frame.itertuples(index=False):
        power = f"; {row.power_sentence}" if row.power_sentence and not row.significant else ""
        lines.append(f"• {row.sentence}{power}")
    return lines


def wrapped(lines: list[str], width: int, hang: int = 2) -> list[str]:
    """`lines` as the terminal shows them: each wrapped at `width` between words, its
    continuation indented `hang` spaces more than the line, "2.2 %" never broken (compare.csv
    keeps each sentence whole)."""
    import textwrap

    def indent(line: str) -> str:
        return line[:len(line) - len(line.lstrip(" "))] + " " * hang

    return [part.replace("\u00a0", " ") for line in lines
            for part in textwrap.wrap(line.replace(" %", "\u00a0%"), width, subsequent_indent=indent(line),
                                      break_on_hyphens=False) or [""]]


def compare_table(frame, width: int | None = None):
    """`compare`'s rows as a table (the sentences are printed apart, one line each), with the
    columns that fit `width` (None: all), the config ids whole: a, b, the Holm-corrected p and
    whether it is significant always; then the relative difference, the effect (Cohen's d of a
    t test, `r`: the rank-biserial correlation of a rank test), n, the diverged runs of each
    config, the means and the test, as long as they fit. compare.csv has every column."""
    from rich.console import Group
    from rich.text import Text

    def num(x) -> str:
        return "–" if x != x else f"{x:.3g}"  # x != x: NaN, where a test was not possible

    def effect(r) -> str:
        if r.rank_biserial == r.rank_biserial:
            return f"r {r.rank_biserial:+.2f}"
        return "–" if r.effect_size != r.effect_size else f"d {r.effect_size:+.3g}"

    rows = list(frame.itertuples(index=False))

    def column(header: str, cell, kind: str = "metric") -> Column:
        return Column(header, [cell(r) for r in rows], kind, header)

    cols = [
        column("a", lambda r: r.config_a, "id"), column("b", lambda r: r.config_b, "id"),
        column("test", lambda r: r.test, "param"),
        column("n", lambda r: str(r.n_pairs) if r.n_pairs else f"{r.n_a}/{r.n_b}"),
        column("mean a", lambda r: num(r.mean_a)), column("mean b", lambda r: num(r.mean_b)),
        column("rel. diff", lambda r: "–" if r.rel_diff != r.rel_diff else f"{r.rel_diff:+.1%}"),
        column("effect", effect), column("p (Holm)", lambda r: num(r.p_holm)),
        column("", lambda r: "*" if r.significant else ""),
        column("diverged", lambda r: f"{r.diverged_a}/{r.n_a}, {r.diverged_b}/{r.n_b}" if r.diverged_a or r.diverged_b else "–"),
    ]
    by_header = {c.header: c for c in cols}
    chosen = [by_header[h] for h in ("a", "b", "p (Holm)", "")]
    hidden = []
    for header in ("rel. diff", "effect", "n", "diverged", "mean a", "mean b", "test"):
        c = by_header[header]
        (chosen if width is None or table_width([*chosen, c]) <= width else hidden).append(c)
    title = f"{frame['metric'].iloc[0]}: paired where configs share seeds, Holm-corrected"
    parts = [Text(title, style="bold"), rich_table([c for c in cols if c in chosen])]
    if hidden:
        parts.append(Text(f"not shown (too wide; compare.csv has every column): {', '.join(c.header for c in hidden)}"))
    return Group(*parts)

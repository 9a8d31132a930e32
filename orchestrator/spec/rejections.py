"""Points the trainer rejects, grouped by cause, and how validation and a run report them.

The program's verdict on a point quotes the point's own values: the base file, the resolved
point, the numbers that failed a check. Points that fail for the same reason differ only there,
so a reason is the message with those values left out, and each reason is shown once, with how
many points it rejected and one of them.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass
from typing import Any

WIDTH = 100  # columns the report is wrapped to: readable in a standard terminal, never cut

# A value the message quotes: a number (not a digit inside a name such as beta2), a quoted
# string, or a None/null/True/False.
_VALUE = (r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?!\w)"
          r"|'[^']*'|\"[^\"]*\"|\b(?:None|null|True|False)\b")
_GOT = re.compile(r" \(got .*?\)(?=; |\.?$)")  # the trainer's "(got VALUE)" after a field
_PAREN = re.compile(r" \(([^()]*)\)")


@dataclass(frozen=True)
class Reason:
    """One cause: the message without the point's values, how many points, one of them."""

    text: str
    count: int
    example: dict[str, Any]


@dataclass(frozen=True)
class Rejections:
    """The points of one check the program rejected, grouped by reason (most points first).

    `what` names the points ("grid points", "sampled proposals", "proposals") and `checked`
    how many were checked, so the report can say "N of M"."""

    what: str
    checked: int
    reasons: tuple[Reason, ...]

    @property
    def count(self) -> int:
        """How many points were rejected."""
        return sum(r.count for r in self.reasons)

    def share(self) -> str:
        """`N of M grid points are invalid for the program`, with a percentage when sampled."""
        pct = f" ({100 * self.count / self.checked:.0f}%)" if self.what != "grid points" else ""
        verb = "is" if self.count == 1 else "are"
        return f"{self.count} of {self.checked} {self.what}{pct} {verb} invalid for the program"


def reason_text(error: str, resolved: dict[str, Any]) -> str:
    """The program's message for one point, less the file, the point and the quoted values."""
    # The trainer names its source as `BASE at {sorted point JSON}: `; what follows is the cause.
    marker = json.dumps(resolved, sort_keys=True)
    if marker in error:
        error = error.split(marker, 1)[1].removeprefix(":").strip()
    text = _GOT.sub("", error.strip()).removesuffix(".")

    def drop_values(m: re.Match[str]) -> str:
        # "(64)", "(4 * 2)", "(got 3)": only values and operators inside; words stay.
        rest = re.sub(_VALUE, "", m.group(1))
        return "" if re.fullmatch(r"[\s*+/x×,<>=-]*", rest) else m.group(0)

    return _PAREN.sub(drop_values, text)


def _key(text: str) -> str:
    # Values a message states without brackets still differ from point to point.
    return re.sub(_VALUE, "#", text)


def group(rejected: list[tuple[dict[str, Any], str, dict[str, Any]]], checked: int, what: str,
          shown: list[str]) -> Rejections:
    """Group (point, error, resolved config) triples by reason; an example keeps only the
    `shown` parameters (the varied ones) when it has any."""
    found: dict[str, tuple[str, int, dict[str, Any]]] = {}
    for point, error, resolved in rejected:
        text = reason_text(error, resolved)
        key = _key(text)
        if key in found:
            first, n, example = found[key]
            found[key] = (first, n + 1, example)
        else:
            found[key] = (text, 1, {k: v for k, v in point.items() if k in shown} or point)
    reasons = sorted((Reason(t, n, ex) for t, n, ex in found.values()), key=lambda r: -r.count)
    return Rejections(what, checked, tuple(reasons))


def point_text(point: dict[str, Any]) -> str:
    """A point as the `key=value` overrides it stands for."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in point.items()) or "(the base config)"


def one_line(point: dict[str, Any], error: str, resolved: dict[str, Any],
             shown: list[str]) -> str:
    """One rejected point: its reason, then its `shown` parameters."""
    compact = {k: v for k, v in point.items() if k in shown} or point
    return f"{reason_text(error, resolved)} ({point_text(compact)})"


def render(rejections: Rejections, lead: str, first: int = 0) -> str:
    """`lead` then every reason: its count, its text, and its example point, wrapped; `first`
    columns of the first line are already taken (by an `error: ` prefix)."""
    lines = textwrap.wrap(lead, WIDTH, initial_indent=" " * first, break_long_words=False,
                          break_on_hyphens=False)
    lines[0] = lines[0][first:]
    for r in rejections.reasons:
        n = f"{r.count} {rejections.what if r.count != 1 else rejections.what[:-1]}"
        lines += textwrap.wrap(f"- {n}: {r.text}", WIDTH, initial_indent="  ",
                               subsequent_indent="    ", break_long_words=False,
                               break_on_hyphens=False)
        lines += textwrap.wrap(f"e.g. {point_text(r.example)}", WIDTH, initial_indent="    ",
                               subsequent_indent="      ", break_long_words=False,
                               break_on_hyphens=False)
    return "\n".join(lines)


def skipped(rejections: Rejections) -> str:
    """What a spec with `skip_invalid` loses: how many points remain, and why the rest do not."""
    if rejections.what == "grid points":
        lead = (f"{rejections.checked - rejections.count} of {rejections.checked} grid points "
                f"remain: {rejections.count} invalid for the program are skipped (skip_invalid)")
    else:
        lead = f"{rejections.share()}; the search skips such proposals (skip_invalid)"
    return render(rejections, f"note: {lead}. Reasons:")


def no_new_point(rejections: Rejections) -> str:
    """Why a run ends when the engine proposes nothing new (`rejections.checked` proposals
    since the last new trial): configs already tried, invalid points, or both. The first line
    is short, since the progress line's stamp precedes it."""
    n, bad = rejections.checked, rejections.count
    if not bad:
        return "the engine keeps proposing configs already tried; ending the sweep"
    if bad == n:
        return (f"ending the sweep: all {n} proposals since the last new trial were invalid\n"
                + render(rejections, "for the program. Reasons:"))
    return (f"ending the sweep: nothing new in the engine's last {n} proposals\n"
            + render(rejections, f"({n - bad} configs already tried, {bad} invalid for the "
                                 "program). Reasons:"))

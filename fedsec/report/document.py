"""One report document rendered twice, as Markdown and as self-contained HTML (for :mod:`fedsec.report`).

Blocks are headings, paragraphs, tables and figures; inline markup is `code`, **bold** and
[text](href). Written by hand (no Markdown library) because the HTML only needs these few elements.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _is_number(text: str) -> bool:
    try:
        float(text.split(" ± ")[0])
    except ValueError:
        return False
    return True


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}h1{border-bottom:2px solid #ddd}
h2{margin-top:1.8em;border-bottom:1px solid #eee}table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}.wide{overflow-x:auto}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:0.9em}
code{background:#f3f3f3;padding:0 3px;border-radius:3px}"""
_NUM = ' class="num"'


@dataclass
class Document:
    """Blocks rendered twice: as Markdown and as HTML (inline markup: `code`, **bold**, [text](href))."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def figure(self, src: str, caption: str) -> None:
        self.blocks.append(("figure", (src, caption)))

    @staticmethod
    def _numeric_columns(header: list[str], rows: list[list[str]]) -> list[bool]:
        return [bool(cells) and all(_is_number(c) for c in cells)
                for cells in ([r[i] for r in rows if r[i] not in ("", "-")] for i in range(len(header)))]

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, body in self.blocks:
            if kind == "h2":
                out += [f"## {body}", ""]
            elif kind == "p":
                out += [body, ""]
            elif kind == "table":
                header, rows = body
                numeric = self._numeric_columns(header, rows)
                out.append("| " + " | ".join(header) + " |")
                out.append("| " + " | ".join("---:" if n else "---" for n in numeric) + " |")
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
                out.append("")
            elif kind == "figure":
                src, caption = body
                out += [f"![{caption}]({src})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{html.escape(self.title)}</title>", f"<style>{_CSS}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]
        for kind, body in self.blocks:
            if kind == "h2":
                out.append(f"<h2>{_inline_html(body)}</h2>")
            elif kind == "p":
                out.append(f"<p>{_inline_html(body)}</p>")
            elif kind == "table":
                header, rows = body
                numeric = self._numeric_columns(header, rows)
                out.append('<div class="wide"><table><thead><tr>'
                           + "".join(f"<th>{_inline_html(h)}</th>" for h in header) + "</tr></thead><tbody>")
                for row in rows:
                    out.append("<tr>" + "".join(f"<td{_NUM if n else ''}>{_inline_html(c)}</td>"
                                                for c, n in zip(row, numeric, strict=True)) + "</tr>")
                out.append("</tbody></table></div>")
            elif kind == "figure":
                src, caption = body
                out.append(f'<figure><img src="{html.escape(src)}" alt="{html.escape(caption)}">'
                           f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------------ reading

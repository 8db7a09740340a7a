"""Small building blocks for self-contained HTML pages: escaping, embedded JPEGs, inline SVG bar charts.

Pages carry everything inline (CSS, images as data URIs, charts as SVG), so they open from a file anywhere.
"""

from __future__ import annotations

import base64
import html

import numpy as np

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d232a;background:#fafafa}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#667} .tag{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.8em;margin-left:6px}
.ok,.valid{background:#d8f3dc;color:#1b4332} .unavailable{background:#eee;color:#555} .error,.invalid,.failed{background:#ffd6d6;color:#7a1010}
.frames{display:flex;gap:6px;flex-wrap:wrap} .frames figure{margin:0} .frames img{height:120px;border-radius:4px;display:block}
figcaption{font-size:.75em;color:#667;text-align:center}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top;font-size:.9em}
.step{border-left:4px solid #4a7fb5;background:#fff;margin:6px 0;padding:6px 10px;border-radius:4px}
.loop{border-left-color:#b5834a} .conditional{border-left-color:#8a4ab5} .routine{border-left-color:#4ab58a}
.cond{font-family:ui-monospace,Menlo,monospace;font-size:.85em;background:#f1f3f5;padding:1px 5px;border-radius:3px;margin-right:4px}
.board{display:flex;gap:10px;overflow-x:auto;padding-bottom:8px} .card{min-width:190px;max-width:230px;background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
.card img{width:100%;border-radius:4px} .card h4{margin:4px 0}
.card,.step,td{overflow-wrap:anywhere}
pre{white-space:pre-wrap;background:#fff;border:1px solid #ddd;padding:8px;border-radius:4px;font-size:.85em}
"""


def esc(text) -> str:
    """Text from records as HTML that shows as itself: escaped, and control characters and the invisible ones that
    reorder or hide text (a right-to-left override in a narration) written out as in the terminal."""
    from leap_cli.report.terminal import visible_controls

    return html.escape(visible_controls(str(text)), quote=True)


def jpeg_data_uri(image_rgb: np.ndarray, quality: int = 85) -> str:
    """An RGB uint8 image as a ``data:image/jpeg;base64,...`` URI."""
    from leap_cli.media.write import encode_jpeg

    return "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(image_rgb, quality)).decode("ascii")


LABEL_CHARS = 22  # what fits left of the bars (164 px at 12 px) in a proportional font


def bar_chart(title: str, counts: list[tuple[str, float]], *, width: int = 560, bar_height: int = 18,
              colour: str = "#4a7fb5", show_title: bool = True) -> str:
    """A horizontal bar chart as inline SVG (labels left, values right)."""
    if not counts:
        return f"<p class='muted'>{esc(title)}: nothing to plot</p>"
    label_w, value_w = 170, 60
    top = max(v for _, v in counts) or 1
    head = 24 if show_title else 4
    h = bar_height * len(counts) + head + 6
    rows = []
    for i, (label, value) in enumerate(counts):
        y = head + i * bar_height
        w = (width - label_w - value_w) * value / top
        short = label if len(label) <= LABEL_CHARS else label[:LABEL_CHARS - 1] + "…"  # cut before escaping
        rows.append(f"<text x='{label_w - 6}' y='{y + bar_height * 0.7:.1f}' text-anchor='end' font-size='12'>"
                    f"{esc(short)}<title>{esc(label)}</title></text><rect x='{label_w}' y='{y + 2}' width='{w:.1f}' "
                    f"height='{bar_height - 4}' fill='{colour}' rx='2'/><text x='{label_w + w + 4:.1f}' "
                    f"y='{y + bar_height * 0.7:.1f}' font-size='12'>{value:g}</text>")
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{h}' role='img' "
            f"aria-label='{esc(title)}'>"
            + (f"<text x='0' y='14' font-size='13' font-weight='bold'>{esc(title)}</text>" if show_title else "")
            + "".join(rows) + "</svg>")


def page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head>"
            f"<body>{body}</body></html>\n")

"""The "Search" section: for each searched arm (Optuna), every sampled configuration ranked by its mean
validation mAP over its seeds, the chosen one first: the one whose test mAP the main table shows. Test
mAP is listed beside it and never chooses. Empty for sweeps without a search."""

from __future__ import annotations

import html

from ..catalogue import metric
from .rows import SELECT_METRIC
from .sections import DatasetContext, Section, register_section

HEAD = ["rank", "sample", "configuration", "val mAP (chooses)", "test mAP", "seeds", "chosen"]
NOTE = ("Each sample's values are means over its seeds (one run each). The sample with the best mean validation "
        "mAP fills the main table's row; test mAP is shown, never used to choose. Incomplete samples (a seed "
        "failed or is missing) rank last and cannot be chosen.")


def _rows(search) -> list[list[str]]:
    val, test = metric(SELECT_METRIC), metric("test_map")
    return [[str(i + 1) if s.complete else "—", f"#{s.number}",
             ", ".join(f"{k}={v}" for k, v in s.settings.items()) or "—",
             val.text(s.mean(SELECT_METRIC)), test.text(s.mean("test_map")), str(len(s.runs)),
             "✔" if s is search.chosen else ("incomplete" if not s.complete else "")]
            for i, s in enumerate(search.samples)]


@register_section
def search_section(ctx: DatasetContext) -> Section:
    searches = [s for s in ctx.searches if s.samples and s.samples[0].runs[0].tag("dataset") == ctx.dataset]
    if not searches:
        return Section()
    md, page, data = [], [], {}
    for search in searches:
        chosen = f"chosen on validation: #{search.chosen.number}" if search.chosen else "no complete sample"
        title = f"Search: {search.row} ({search.arm}; {len(search.samples)} samples; {chosen})"
        rows = _rows(search)
        md += [f"#### {title}", "", "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD),
               *("| " + " | ".join(r) + " |" for r in rows), "", NOTE, ""]
        th = "".join(f"<th>{html.escape(h)}</th>" for h in HEAD)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r) + "</tr>" for r in rows)
        page.append(f"<h3>{html.escape(title)}</h3><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody>"
                    f"</table><p>{html.escape(NOTE)}</p>")
        data[search.arm] = {"row": search.row, "searched": search.searched,
                            "chosen": search.chosen.key if search.chosen else None,
                            "samples": [{"sample": s.key, "settings": s.settings, "val_map": s.mean(SELECT_METRIC),
                                         "test_map": s.mean("test_map"), "seeds": len(s.runs),
                                         "complete": s.complete} for s in search.samples]}
    return Section("\n".join(md), "".join(page), data={"searches": data})

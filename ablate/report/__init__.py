"""MLflow runs -> paper-style tables, cost-vs-mAP Pareto plots, per-class AP heatmap, paired
differences and one self-contained `report.html`.

Only FINISHED trial runs enter any number; failed, running, killed and missing trials (expected
from the sweep's own spec, logged on its parent run) are listed separately. Outputs are written to
a folder and logged to the sweep's parent run under `report/`.

One job a module: `trials` (reading MLflow), `rows` (which configuration's row each run fills; searches),
`tables` (numbers and their text forms), `plots`, `search` (a search's samples ranked),
`sections` (what each data set's part of the report holds), `writer` (the folder, the page, MLflow's copy).
"""

from __future__ import annotations

from ..errors import ReportError  # noqa: F401  (raised by write_report; callers catch it from here)
from .plots import _img, _png, cost_plot, per_class_heatmap  # noqa: F401
from .reproduction import compare, reproduction_section  # noqa: F401  (registers the section)
from .rows import Rows, Search, assign_rows, identity  # noqa: F401
from .search import search_section  # noqa: F401  (registers the section)
from .search_fronts import search_front_section  # noqa: F401  (registers the section)
from .sections import (  # noqa: F401
    SECTIONS,
    DatasetContext,
    Section,
    SectionFn,
    cost_section,
    diagnostics_section,
    heatmap_section,
    paired_section,
    pretraining_section,
    register_section,
    table_section,
    world_observations,
)
from .tables import (  # noqa: F401
    _cell,
    _diagnostics_html,
    _html_table,
    _weights,
    build_table,
    diagnostics,
    expected_missing,
    paired_differences,
    pareto,
    table_frame,
    table_markdown,
)
from .trials import (  # noqa: F401
    TEST_SELECTED,
    TEST_SELECTED_NOTE,
    Cell,
    RunRecord,
    Table,
    load_trials,
    ratio_free,
)
from .writer import (  # noqa: F401
    STYLE,
    _build,
    _page,
    _replace_folder,
    _spec_text,
    _staged,
    check_report_folder,
    note_report,
    write_report,
)

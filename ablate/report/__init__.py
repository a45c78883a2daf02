"""MLflow runs -> paper-style tables, cost-vs-mAP Pareto plots, per-class AP heatmap, paired
differences and one self-contained `report.html`.

Only FINISHED trial runs enter any number; failed, running, killed and missing trials (expected
from the sweep's own spec, logged on its parent run) are listed separately. Outputs are written to
a folder and logged to the sweep's parent run under `report/`.

One job a module: `trials` (reading MLflow), `tables` (numbers and their text forms), `plots`,
`sections` (what each data set's part of the report holds), `writer` (the folder, the page, MLflow's copy).
"""

from __future__ import annotations

from ..errors import ReportError  # noqa: F401  (raised by write_report; callers catch it from here)
from .plots import _img, _png, cost_plot, per_class_heatmap  # noqa: F401
from .reproduction import compare, reproduction_section  # noqa: F401  (registers the section)
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
    WEIGHT_FIELDS,
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
    ROW_FIELDS,
    TEST_SELECTED,
    TEST_SELECTED_NOTE,
    Cell,
    RunRecord,
    Table,
    load_trials,
    ratio_free,
    row_labels,
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

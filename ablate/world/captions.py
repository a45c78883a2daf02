"""The world's caption styles: what a pre-training recipe names and the world generator writes. Kept
apart from the generator so the recipe parser (and so the config layer) reads them without PIL."""

from __future__ import annotations

from typing import Literal

CaptionStyle = Literal["presence", "negation"]
STYLES: tuple[CaptionStyle, ...] = ("presence", "negation")

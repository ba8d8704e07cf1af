"""``ReportConfig``: how ``report.html`` is drawn. Pure data."""

from __future__ import annotations

from pydantic import Field

from afprobe.config import StrictModel


class ReportConfig(StrictModel):
    """``title`` heads the page (default: the model name); ``dpi`` sets the resolution of the embedded PNGs;
    ``sample_pair`` picks which pair (by ``pair_id``) the setup section shows in full."""

    title: str | None = None
    dpi: int = Field(default=110, ge=50, le=300)
    sample_pair: int = Field(default=0, ge=0)

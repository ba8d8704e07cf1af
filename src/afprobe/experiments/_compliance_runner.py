"""``ComplianceRunner``: the logit metric and generated responses of every prompt, the gap -> JSON + CSV."""

from __future__ import annotations

from pathlib import Path

from afprobe._io import check_out_dir, write_csv, write_json
from afprobe.experiments._compliance import ComplianceResult, measure_compliance
from afprobe.experiments._config import ComplianceRunConfig
from afprobe.experiments._subject import Subject, build_subject

COMPLIANCE_FILE = "compliance.json"
COMPLIANCE_SCHEMA = "afprobe.compliance/1"


class ComplianceRunner:
    """Measure compliance on ``cfg.scenario``'s prompts (or on a prepared :class:`Subject`) and write
    ``compliance.csv`` and, last, ``compliance.json`` into ``out``."""

    def __init__(self, cfg: ComplianceRunConfig, *, progress: bool = True, overwrite: bool = False):
        self.cfg = cfg
        self.progress = progress
        self.overwrite = overwrite

    def run(self, out: str | Path | None = None, *, subject: Subject | None = None) -> ComplianceResult:
        cfg = self.cfg
        out_dir = Path(out) if out is not None else None
        if out_dir is not None:
            check_out_dir(out_dir, COMPLIANCE_FILE, self.overwrite)
        s = subject or build_subject(cfg.model, cfg.scenario)
        result = measure_compliance(s.backend, s.items, cfg.compliance, seed=cfg.seed, progress=self.progress)
        if out_dir is not None:
            write_compliance(result, out_dir, s, cfg.model_dump(mode="json"))
        return result


def write_compliance(result: ComplianceResult, out: Path, s: Subject, config: dict) -> None:
    """``compliance.csv`` (one row per prompt), then ``compliance.json`` (the summary with its provenance)."""
    write_csv(out / "compliance.csv", result.rows())
    meta = {"schema": COMPLIANCE_SCHEMA, "model": s.lm.meta(), "config": config}
    write_json(out / COMPLIANCE_FILE, {**meta, **result.summary})

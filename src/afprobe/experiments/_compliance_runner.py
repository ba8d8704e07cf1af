"""``ComplianceRunner``: the logit metric and generated responses of every prompt, the gap -> JSON + CSV."""

from __future__ import annotations

from pathlib import Path

from afprobe._io import write_csv, write_json
from afprobe.experiments._compliance import ComplianceResult, measure_compliance
from afprobe.experiments._config import ComplianceRunConfig
from afprobe.experiments._subject import ExperimentRunner, Subject

COMPLIANCE_FILE = "compliance.json"
COMPLIANCE_SCHEMA = "afprobe.compliance/1"


class ComplianceRunner(ExperimentRunner):
    """Measure compliance on ``cfg.scenario``'s prompts (or on a prepared :class:`Subject`) and write
    ``compliance.csv`` and, last, ``compliance.json`` into ``out``."""

    RESULT_FILE = COMPLIANCE_FILE
    cfg: ComplianceRunConfig

    def run(self, out: str | Path | None = None, *, subject: Subject | None = None) -> ComplianceResult:
        cfg = self.cfg
        out_dir = self._out_dir(out)
        s = self._subject(subject)
        result = measure_compliance(
            s.backend, s.items, cfg.compliance, seed=cfg.seed, progress=self.progress, prefixes=s.prefixes
        )
        if out_dir is not None:
            write_compliance(result, out_dir, s, cfg.model_dump(mode="json"))
        return result


def write_compliance(result: ComplianceResult, out: Path, s: Subject, config: dict) -> None:
    """``compliance.csv`` (one row per prompt), then ``compliance.json`` (the summary with its provenance)."""
    write_csv(out / "compliance.csv", result.rows())
    meta = {"schema": COMPLIANCE_SCHEMA, "model": s.lm.meta(), "config": config}
    write_json(out / COMPLIANCE_FILE, {**meta, **result.summary})

"""Structured findings: what every check says, in one shape.

A check returns :class:`Finding` records ``{code, severity, message, evidence}``. The
``code`` is stable (documented in docs/study_design.md, one line per code in :data:`CODES`)
so that scripts, tests and the warning-calibration benchmark can count them; the
``severity`` says how much to worry:

* ``alarm``: the design or the data cannot support the answer (e.g. class = well); read
  nothing before fixing it.
* ``caution``: the answer may be right but is weak or may be wrong (few held-out objects,
  readouts that disagree, a fallback segmentation channel).
* ``note``: context worth knowing that is no reason to doubt the answer (the phenotype
  changes a channel's brightness consistently across held-out wells).

Faces show ``warnings`` (alarms and cautions) apart from ``notes``; a study's one verdict is
its worst severity.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["alarm", "caution", "note"]
SEVERITIES: tuple[Severity, ...] = ("alarm", "caution", "note")

# Every code any check may emit, with its usual severity and one line of meaning.
# docs/study_design.md lists the same codes with what to do (a test keeps the two in step).
CODES: dict[str, tuple[Severity, str]] = {}


def register_code(code: str, severity: Severity, meaning: str) -> str:
    """Declare a finding code once, beside the check that emits it; returns the code."""
    if severity not in SEVERITIES:
        raise ValueError(f"unknown severity {severity!r}")
    known = CODES.get(code)
    if known is not None and known != (severity, meaning):
        raise ValueError(f"finding code {code!r} is declared twice, differently")
    CODES[code] = (severity, meaning)
    return code


@dataclass(frozen=True)
class Finding:
    """One thing a check found: a stable ``code``, a ``severity``, a sentence for a
    biologist and the numbers behind it (JSON-ready ``evidence``)."""

    code: str
    severity: Severity
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")

    @property
    def is_warning(self) -> bool:
        """Alarms and cautions are warnings; notes are not."""
        return self.severity != "note"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "message": self.message,
                "evidence": dict(self.evidence)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(code=str(d["code"]), severity=d["severity"], message=str(d["message"]),
                   evidence=dict(d.get("evidence") or {}))

    def __str__(self) -> str:
        return f"[{self.severity}] {self.code}: {self.message}"


def make(code: str, message: str, severity: Severity | None = None,
         **evidence: Any) -> Finding:
    """A finding of a registered code (its declared severity unless one is given)."""
    if code not in CODES:
        raise KeyError(f"finding code {code!r} is not registered")
    return Finding(code, severity or CODES[code][0], message, evidence)


def dedupe(findings: Iterable[Finding]) -> list[Finding]:
    """Findings in order, each (code, message) once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for f in findings:
        if (f.code, f.message) not in seen:
            seen.add((f.code, f.message))
            out.append(f)
    return out


def split(findings: Iterable[Finding]) -> tuple[list[Finding], list[Finding]]:
    """(warnings, notes): alarms and cautions (alarms first), then the notes."""
    fs = dedupe(findings)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    warnings = sorted((f for f in fs if f.is_warning), key=lambda f: rank[f.severity])
    return warnings, [f for f in fs if not f.is_warning]


def verdict(findings: Iterable[Finding]) -> Severity | Literal["ok"]:
    """The worst severity among the findings, or ``"ok"`` when there are none."""
    sev = {f.severity for f in findings}
    return next((s for s in SEVERITIES if s in sev), "ok")


def as_json(findings: Iterable[Finding]) -> dict[str, list[dict[str, Any]]]:
    """``{"warnings": [...], "notes": [...]}`` as the CLI's ``--format json`` prints them."""
    warnings, notes = split(findings)
    return {"warnings": [f.as_dict() for f in warnings],
            "notes": [f.as_dict() for f in notes]}


DATA_WARNING = register_code(
    "data-warning", "caution",
    "a warning passed on by data loading or an older bundle, without a code of its own")


def data_findings(metadata: dict[str, Any]) -> list[Finding]:
    """Findings a data set carries: ``metadata["findings"]`` (Finding records or their
    dicts), then each string of ``metadata["warnings"]`` not already among them, as a
    ``data-warning`` caution."""
    out = [f if isinstance(f, Finding) else Finding.from_dict(f)
           for f in metadata.get("findings") or []]
    said = {f.message for f in out}
    out += [make(DATA_WARNING, str(w)) for w in metadata.get("warnings") or []
            if str(w) not in said]
    return out


def from_warnings(warnings: Iterable[str], stored: Iterable[dict] | None = None
                  ) -> list[Finding]:
    """Findings of a saved result: the stored dicts when present, else each warning
    string as a ``data-warning`` (bundles from before findings existed)."""
    if stored:
        return [Finding.from_dict(d) for d in stored]
    return [make(DATA_WARNING, str(w)) for w in warnings]


VERDICT_TEXT = {
    "ok": "OK (no warnings)",
    "note": "OK (no warnings; notes below)",
    "caution": "CAUTION: the answer may be right but is weak; read the cautions",
    "alarm": "ALARM: the design or data cannot support the answer; fix the alarm before "
             "trusting any ranking",
}


def summary_lines(findings: Iterable[Finding]) -> list[str]:
    """Plain lines for any face: the study verdict, then each warning (alarms first),
    then each note, as ``severity [code] message``."""
    fs = list(findings)
    warnings, notes = split(fs)
    return ([f"study verdict: {VERDICT_TEXT[verdict(fs)]}"]
            + [f"{f.severity} [{f.code}] {f.message}" for f in warnings + notes])

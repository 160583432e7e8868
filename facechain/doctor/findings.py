"""What ``facechain doctor`` reports: typed findings, each problem with its fix, and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Status = Literal["ok", "note", "problem"]
SECTIONS = ("torch", "onnxruntime", "opencv", "face-backend", "models", "disk")


@dataclass(frozen=True)
class Finding:
    """One fact about the machine. ``fix`` is one line telling what to do about a problem or a note;
    ``commands`` the pip argument lists (after ``python -m pip``) that apply it, where pip can."""

    section: str
    check: str
    status: Status
    detail: str
    fix: str = ""
    commands: tuple[tuple[str, ...], ...] = ()
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "problem"]

    @property
    def exit_code(self) -> int:
        """0 when nothing is a problem, 1 otherwise (notes do not count)."""
        return 1 if self.problems else 0

    def to_dict(self) -> dict:
        return {"problems": len(self.problems), "findings": [asdict(f) for f in self.findings]}


def gib(n: float) -> str:
    """A byte count in GiB, one decimal."""
    return f"{n / (1 << 30):.1f} GiB"


def fix_commands(report: DoctorReport) -> list[tuple[str, ...]]:
    """The pip argument lists (after ``python -m pip``) of every problem pip can fix, in report order."""
    return [cmd for f in report.problems for cmd in f.commands]

"""The `raytev doctor` stage: gather every section, judge them, and hand back a report that prints as text (or JSON
with --json) and whose fields a program reads (`raytev.doctor().torch.cuda_available`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from raytev.config.stages import DoctorConfig
from raytev.diagnostics.facts import (
    CpuFacts,
    FaissFacts,
    JaxFacts,
    LibraryFacts,
    MemoryFacts,
    PythonFacts,
    RayFacts,
    RaytevFacts,
    TorchFacts,
    cpu_facts,
    faiss_facts,
    jax_facts,
    library_facts,
    memory_facts,
    python_facts,
    ray_facts,
    raytev_facts,
    start_jax_probe,
    torch_facts,
)
from raytev.diagnostics.rules import (
    cpu_bf16_warnings,
    faiss_gpu_warnings,
    faiss_install_warnings,
    jax_warnings,
    ray_warnings,
    resource_warnings,
    torch_warnings,
)


@dataclass
class DoctorReport:
    """What this machine and install will use, one section per field, and the warnings about them."""

    raytev: RaytevFacts
    python: PythonFacts
    cpu: CpuFacts
    memory: MemoryFacts
    torch: TorchFacts
    faiss: FaissFacts
    jax: JaxFacts
    libraries: LibraryFacts
    ray: RayFacts
    warnings: list[str] = field(default_factory=list)
    as_json = False  # summary() as JSON (`raytev doctor --json`)

    @property
    def sections(self) -> dict:
        """{section name: its facts}, in the report's order."""
        return {item.name: getattr(self, item.name) for item in fields(self) if item.name != "warnings"}

    def as_dict(self) -> dict:
        """Every section's facts and the warnings, as JSON types (what --json prints)."""
        return {**{name: asdict(section) for name, section in self.sections.items()}, "warnings": self.warnings}

    def summary(self) -> str:
        """What `raytev doctor` prints: `name: value` lines under each [section], then one line per warning."""
        if self.as_json:
            return json.dumps(self.as_dict(), indent=2)
        lines = []
        for name, section in self.sections.items():
            lines += [f"[{name}]"] + [f"  {label}: {value}" for label, value in section.lines()]
        return "\n".join(lines + ([f"warning: {warning}" for warning in self.warnings] or ["no warnings"]))


def doctor(config: DoctorConfig) -> DoctorReport:
    """Gather every section (jax's in a child process, meanwhile the rest here) and add the warnings."""
    jax_probe = start_jax_probe()
    try:
        report = DoctorReport(raytev=raytev_facts(), python=python_facts(), cpu=cpu_facts(), memory=memory_facts(),
                              torch=torch_facts(), faiss=faiss_facts(), jax=jax_facts(jax_probe),
                              libraries=library_facts(), ray=ray_facts(config.ray_address))
    finally:
        if jax_probe is not None and jax_probe.poll() is None:
            jax_probe.kill()
    report.warnings = judge(report)
    report.as_json = config.json
    return report


def judge(report: DoctorReport) -> list[str]:
    """Every rule's warnings about a report's facts."""
    return (faiss_install_warnings(report.faiss) + faiss_gpu_warnings(report.faiss, report.torch)
            + torch_warnings(report.torch) + cpu_bf16_warnings(report.cpu) + jax_warnings(report.jax, report.torch)
            + ray_warnings(report.ray) + resource_warnings(report.memory))

"""What `raytev doctor` reports, one section at a time: each section is a small dataclass whose fields a program
reads and whose lines() the text report prints. Gathering one never starts Ray, and jax is asked in a child process
with a timeout (a TPU held by another process can block `import jax`'s first device query)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from raytev.compat import installed_version, local_ray_address
from raytev.errors import RaytevError
from raytev.index.faiss_install import FaissDistribution, check_one_faiss, faiss_distributions
from raytev.machine import cpu_flags, cpu_model, memory_gib, usable_cores
from raytev.ray_auth import AUTH_MODE, token_source

# The CPU flags raytev's speed depends on: AVX-512 for faiss's OpenBLAS kernels, avx512_bf16 and AMX for --bf16.
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
JAX_TIMEOUT_S = 60
# What the jax child process prints: one JSON object.
JAX_PROBE = """\
import json
import jax
devices = jax.devices()
print(json.dumps({"version": jax.__version__, "backend": jax.default_backend(),
                  "devices": [f"{device.platform}:{device.id} {device.device_kind}" for device in devices]}))
"""


def shown(value) -> str:
    """A value as the text report prints it: yes/no, 'none' for nothing, lists joined with commas."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == []:
        return "none"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


@dataclass
class RaytevFacts:
    """raytev itself: which version, imported from where."""

    version: str = ""
    location: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        return [("version", self.version), ("location", self.location)]


@dataclass
class PythonFacts:
    """The interpreter and the operating system."""

    version: str = ""
    executable: str = ""
    os: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        return [("version", self.version), ("executable", self.executable), ("os", self.os)]


@dataclass
class CpuFacts:
    """The CPU: model, cores, and the flags that decide faiss's kernels and what --bf16 costs."""

    model: str = ""
    logical_cores: int = 0
    usable_cores: int = 0
    flags: list[str] | None = None  # those of RELEVANT_CPU_FLAGS it has; None: the system does not say
    bf16: str = field(init=False)  # what --bf16 runs on with this CPU, from the flags

    def __post_init__(self) -> None:
        self.bf16 = "unknown (the CPU's flags are not listed)" if self.flags is None else \
            "AMX (bf16 matrix tiles: fast)" if "amx_bf16" in self.flags else \
            "avx512_bf16 (native bf16 dot products)" if "avx512_bf16" in self.flags else \
            "emulated (neither avx512_bf16 nor AMX: slower than fp32)"

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        return [("model", self.model), ("logical cores", shown(self.logical_cores)),
                ("usable cores", shown(self.usable_cores)),
                ("flags", "unknown" if self.flags is None else shown(self.flags)),
                ("--bf16 on the CPU", self.bf16)]


@dataclass
class MemoryFacts:
    """Memory, and disk space where raytev keeps its token cache."""

    total_gib: float | None = None
    available_gib: float | None = None
    cache_dir: str = ""
    cache_free_gib: float | None = None  # on the filesystem holding cache_dir (or its nearest existing parent)

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        return [("total", gib(self.total_gib)), ("available", gib(self.available_gib)),
                ("cache folder", self.cache_dir), ("free in cache folder", gib(self.cache_free_gib))]


def gib(value: float | None) -> str:
    """A size in GiB as the text report prints it."""
    return "unknown" if value is None else f"{value:.1f} GiB"


@dataclass
class TorchFacts:
    """torch: its build (CPU, CUDA x.y, ROCm), the GPUs it sees, and whether they do bf16."""

    version: str = ""
    build: str = ""  # "CPU", "CUDA 12.8", "ROCm 6.2"
    cuda_available: bool = False
    devices: list[str] = field(default_factory=list)
    bf16_on_gpu: bool | None = None  # native bf16 (Ampere or newer); None: no GPU to ask
    threads: int | None = None
    error: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        if self.error:
            return [("error", self.error)]
        return [("version", self.version), ("build", self.build), ("cuda available", shown(self.cuda_available)),
                ("devices", shown(self.devices)),
                ("bf16 on the GPU", "no GPU" if self.bf16_on_gpu is None else shown(self.bf16_on_gpu)),
                ("CPU threads", shown(self.threads))]


@dataclass
class FaissFacts:
    """faiss: the distributions that install it, and (when it loads) its version, GPU build and GPUs."""

    distributions: list[FaissDistribution] = field(default_factory=list)
    version: str = ""
    gpu_build: bool | None = None
    gpus: int | None = None
    openblas_coretype: str | None = None  # raytev's kernel choice (raytev/index/faiss_setup.py)
    error: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        installed = [("installed by", shown([str(distribution) for distribution in self.distributions]))]
        if self.error:
            return installed + [("error", self.error)]
        return installed + [("version", self.version), ("GPU build", shown(self.gpu_build)),
                            ("GPUs", shown(self.gpus)), ("OPENBLAS_CORETYPE", shown(self.openblas_coretype))]


@dataclass
class JaxFacts:
    """jax (the `jax` extra), asked in a child process: backend and devices; flax and optax versions."""

    version: str = ""  # "" when jax is not installed
    backend: str = ""
    devices: list[str] = field(default_factory=list)
    flax: str = ""
    optax: str = ""
    error: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        if not self.version and not self.error:
            return [("version", "not installed (the jax extra: pip install \"raytev[jax]\")")]
        state = [("error", self.error)] if self.error else [("version", self.version), ("backend", self.backend),
                                                            ("devices", shown(self.devices))]
        return state + [("flax", shown(self.flax)), ("optax", shown(self.optax))]


@dataclass
class LibraryFacts:
    """The versions of the libraries raytev's models and data go through."""

    transformers: str = ""
    peft: str = ""
    sentence_transformers: str = ""
    datasets: str = ""

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        return [("transformers", shown(self.transformers)), ("peft", shown(self.peft)),
                ("sentence-transformers", shown(self.sentence_transformers) if self.sentence_transformers
                 else "not installed (optional)"), ("datasets", shown(self.datasets))]


@dataclass
class RayFacts:
    """Ray: version, the cluster a stage would join, and the token-authentication settings (never the token)."""

    version: str = ""
    address: str | None = None  # what a stage would join: --ray_address, else RAY_ADDRESS; None: see lines()
    address_from: str | None = None  # "--ray_address" or "RAY_ADDRESS"
    local_cluster: str | None = None  # the address `ray start --head` last wrote on this machine
    local_cluster_answers: bool | None = None
    auth_mode: str | None = None  # RAY_AUTH_MODE
    token: str | None = None  # where Ray would read a token from (a variable's name or a file), None: no token

    def lines(self) -> list[tuple[str, str]]:
        """(name, value) pairs of the text report."""
        # Without an address, ray.init joins the cluster `ray start` last started here, else starts its own.
        if self.address:
            address = f"{self.address} (from {self.address_from})"
        elif self.local_cluster_answers:
            address = f"none: a stage joins the cluster `ray start` runs here ({self.local_cluster})"
        else:
            address = "none: a stage starts a local Ray"
        local = "none" if not self.local_cluster else \
            f"{self.local_cluster} ({'answers' if self.local_cluster_answers else 'does not answer'})"
        return [("version", shown(self.version)), ("address", address), ("local cluster", local),
                (AUTH_MODE, shown(self.auth_mode)), ("token", self.token or "none found")]


def raytev_facts() -> RaytevFacts:
    """raytev's version and the folder it is imported from."""
    import raytev

    return RaytevFacts(version=raytev.__version__, location=str(Path(raytev.__file__).parent))


def python_facts() -> PythonFacts:
    """The interpreter's version and path, and the operating system."""
    return PythonFacts(version=platform.python_version(), executable=sys.executable, os=platform.platform())


def cpu_facts() -> CpuFacts:
    """The CPU's model, cores and relevant flags."""
    flags = cpu_flags()
    return CpuFacts(model=cpu_model(), logical_cores=os.cpu_count() or 0, usable_cores=usable_cores(),
                    flags=None if flags is None else [flag for flag in RELEVANT_CPU_FLAGS if flag in flags])


def memory_facts() -> MemoryFacts:
    """Memory, and free space on the token cache's filesystem (raytev.data.cache chooses the folder)."""
    from raytev.data.cache import default_cache_dir

    total, available = memory_gib()
    cache_dir = default_cache_dir()
    existing = next((folder for folder in (cache_dir, *cache_dir.parents) if folder.exists()), None)
    free = round(shutil.disk_usage(existing).free / 2**30, 1) if existing else None
    return MemoryFacts(total_gib=total, available_gib=available, cache_dir=str(cache_dir), cache_free_gib=free)


def torch_facts() -> TorchFacts:
    """torch's version, build and GPUs (importing torch is most of the command's time)."""
    try:
        import torch
    except (ImportError, OSError) as error:  # OSError: a shared library of its build is missing
        return TorchFacts(error=f"import torch failed: {error}")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else \
        f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU"
    facts = TorchFacts(version=torch.__version__, build=build, cuda_available=torch.cuda.is_available(),
                       threads=torch.get_num_threads())
    if facts.cuda_available:
        facts.devices = [f"cuda:{index} {torch.cuda.get_device_name(index)} "
                         f"({torch.cuda.get_device_properties(index).total_memory / 2**30:.0f} GiB)"
                         for index in range(torch.cuda.device_count())]
        facts.bf16_on_gpu = torch.cuda.is_bf16_supported(including_emulation=False)  # native: Ampere and later
    return facts


def faiss_facts() -> FaissFacts:
    """Who installs faiss; its version and GPUs when exactly one does (a mixed install is reported, not loaded)."""
    facts = FaissFacts(distributions=faiss_distributions())
    try:
        check_one_faiss(facts.distributions)
        from raytev.index.faiss_setup import faiss
    except (RaytevError, OSError) as error:  # faiss_setup turns ImportError into RaytevError with the repair
        facts.error = str(error)
        return facts
    facts.version = faiss.__version__
    facts.gpu_build = hasattr(faiss, "StandardGpuResources")  # only GPU builds have GPU resources
    facts.gpus = faiss.get_num_gpus()
    facts.openblas_coretype = os.environ.get("OPENBLAS_CORETYPE")
    return facts


def start_jax_probe() -> subprocess.Popen | None:
    """Ask jax for its backend and devices in a child process (None when jax is not installed); started first, so
    that it runs while this process imports torch."""
    if importlib.util.find_spec("jax") is None:
        return None
    return subprocess.Popen([sys.executable, "-c", JAX_PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def jax_facts(probe: subprocess.Popen | None, timeout: float = JAX_TIMEOUT_S) -> JaxFacts:
    """The jax probe's answer, and flax's and optax's versions."""
    facts = JaxFacts(flax=installed_version("flax"), optax=installed_version("optax"))
    if probe is None:
        return facts
    try:
        output, errors = probe.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.communicate()
        facts.error = f"no answer from jax within {timeout:g} s (is a TPU or GPU held by another process?)"
        return facts
    try:
        answer = json.loads(output.strip().splitlines()[-1])
    except (IndexError, ValueError):
        last = errors.strip().splitlines()[-1] if errors.strip() else f"exit code {probe.returncode}"
        facts.error = f"jax failed to start: {last}"
        return facts
    facts.version, facts.backend, facts.devices = answer["version"], answer["backend"], answer["devices"]
    return facts


def library_facts() -> LibraryFacts:
    """The versions of transformers, peft, sentence-transformers and datasets (read, not imported)."""
    return LibraryFacts(transformers=installed_version("transformers"), peft=installed_version("peft"),
                        sentence_transformers=installed_version("sentence-transformers"),
                        datasets=installed_version("datasets"))


def ray_facts(address: str | None = None, environ: Mapping[str, str] = os.environ) -> RayFacts:
    """Ray's version, the cluster a stage would join, a cluster running here, and the auth settings."""
    given = address or environ.get("RAY_ADDRESS") or None
    local = local_ray_address(environ)
    return RayFacts(version=installed_version("ray"), address=given,
                    address_from=None if not given else "--ray_address" if address else "RAY_ADDRESS",
                    local_cluster=local, local_cluster_answers=answers(local) if local else None,
                    auth_mode=environ.get(AUTH_MODE), token=token_source(environ))


def answers(address: str, timeout: float = 0.3) -> bool:
    """Whether something accepts TCP connections at host:port (a Ray head's GCS, for a local cluster)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False

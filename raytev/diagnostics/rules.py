"""The known bad combinations `raytev doctor` warns about: each rule reads the facts it needs and returns its
warnings (none when all is well), so a test can feed it made-up facts."""

from __future__ import annotations

from raytev.diagnostics.facts import CpuFacts, FaissFacts, JaxFacts, MemoryFacts, RayFacts, TorchFacts
from raytev.ray_auth import AUTH_MODE, TOKEN_HELP, is_client_address

# A local Ray takes about 0.8 GiB before any work (RAY_NOTES), and training or encoding a small model a few more.
LOW_MEMORY_GIB = 4.0
# A large corpus's token tables take GiBs (every passage's ids as int32, per model and length).
LOW_DISK_GIB = 10.0


def faiss_install_warnings(faiss: FaissFacts) -> list[str]:
    """Two faiss builds, none, or a damaged one: the error raytev would stop with, and its repair."""
    return [faiss.error] if faiss.error else []


def faiss_gpu_warnings(faiss: FaissFacts, torch: TorchFacts) -> list[str]:
    """A faiss build that does not match the GPUs: only `raytev index --use_gpu` uses faiss's GPUs."""
    installed = ", ".join(str(distribution) for distribution in faiss.distributions) or "faiss"
    if faiss.gpu_build and not faiss.gpus:
        return [f"{installed} is a GPU build but sees no GPU: `raytev index --use_gpu` builds on the CPU (raytev "
                f"falls back when faiss finds no GPU); search runs on the CPU in any case."]
    if faiss.gpu_build is False and torch.devices:
        names = " ".join(distribution.name for distribution in faiss.distributions) or "faiss-cpu"
        return [f"{installed} is a CPU build while torch sees {len(torch.devices)} GPU(s): `raytev index --use_gpu` "
                f"(and the pipeline's index step) builds on the CPU without stopping (index.json says device: cpu). "
                f'To build on the GPUs: `pip uninstall -y {names}`, then `pip install "raytev[gpu]"`.']
    return []


def torch_warnings(torch: TorchFacts) -> list[str]:
    """torch that did not import, a CUDA/ROCm build without a GPU, or a GPU without bf16."""
    if torch.error:
        return [torch.error]
    if torch.build not in ("", "CPU") and not torch.cuda_available:
        return [f"torch is a {torch.build} build but sees no GPU (no driver, a driver too old for it, or "
                f"CUDA_VISIBLE_DEVICES empty): --use_gpu runs will fail or wait for a GPU; check `nvidia-smi`."]
    if torch.cuda_available and torch.bf16_on_gpu is False:
        return ["this GPU has no native bfloat16 (it predates Ampere): --bf16 there is emulated and slow; use --fp16."]
    return []


def cpu_bf16_warnings(cpu: CpuFacts) -> list[str]:
    """A CPU without bf16 instructions, where --bf16 is slower than no --bf16 at all."""
    if cpu.flags is None or {"avx512_bf16", "amx_bf16"} & set(cpu.flags):
        return []
    return ["this CPU has neither avx512_bf16 nor AMX: --bf16 on the CPU is emulated and slower than fp32 (leave it "
            "off for CPU runs; runs on GPUs are not affected)."]


def jax_warnings(jax: JaxFacts, torch: TorchFacts) -> list[str]:
    """jax that does not start, or runs on the CPU of a machine with GPUs."""
    if jax.error:
        return [f"jax: {jax.error}"]
    if jax.backend == "cpu" and torch.devices:
        return [f"jax {jax.version} runs on the CPU while torch sees {len(torch.devices)} GPU(s): --backend jax "
                f'would train there; install jax\'s CUDA build (pip install "jax[cuda12]=={jax.version}").']
    return []


def ray_warnings(ray: RayFacts) -> list[str]:
    """Ray connection settings that fail later, with a less helpful message."""
    found = []
    if is_client_address(ray.address) and ray.token is None:
        found.append(f"{ray.address_from} is a Ray client address ({ray.address}) but no token was found: a cluster "
                     f"with token authentication (Ray's default since 2.59) refuses it after ~30 s with a timeout "
                     f"that does not say why; {TOKEN_HELP}.")
    elif ray.auth_mode == "token" and ray.token is None:
        found.append(f"{AUTH_MODE}=token but no token was found: Ray refuses to connect; {TOKEN_HELP}.")
    if not ray.address and ray.local_cluster and not ray.local_cluster_answers:
        found.append(f"Ray's address file names a cluster at {ray.local_cluster} that does not answer (a head that "
                     f"was killed): a stage without --address tries to join it and fails; `ray stop` clears it.")
    return found


def resource_warnings(memory: MemoryFacts) -> list[str]:
    """Little memory, or little disk where the token cache goes."""
    found = []
    if memory.available_gib is not None and memory.available_gib < LOW_MEMORY_GIB:
        found.append(f"only {memory.available_gib:.1f} GiB of memory is available (under {LOW_MEMORY_GIB:g}): a local "
                     f"Ray takes about 0.8 GiB before any work, and training or encoding a model a few GiB more.")
    if memory.cache_free_gib is not None and memory.cache_free_gib < LOW_DISK_GIB:
        found.append(f"only {memory.cache_free_gib:.1f} GiB is free for the token cache ({memory.cache_dir}; under "
                     f"{LOW_DISK_GIB:g}): a large corpus's tokens take GiBs; point RAYTEV_CACHE_DIR at a bigger disk.")
    return found

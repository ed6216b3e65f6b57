"""Hugging Face folders in and out of the Flax encoder: config.json and safetensors (sharded too, or an older
pytorch_model.bin), with checkpoint key names mapped onto the encoder's parameters and back.

Keys the encoder has no parameter for (BERT's pooler, `embeddings.position_ids`) are carried through as they were
read, so that a saved folder loads in transformers without anything re-initialized.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from raytev.errors import RaytevError
from raytev.model.files import find_model_file, read_model_json
from raytev.tevax.encoder import Encoder, EncoderConfig

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_FILE = "pytorch_model.bin"
MAX_SHARD_SIZE = 5 * 1024**3
# Pre-training heads and base-model prefixes of task checkpoints (BertForMaskedLM, coCondenser, ...): dropped.
HEAD_PREFIXES = ("cls.", "lm_head.", "classifier.", "qa_outputs.", "discriminator_predictions.")
BASE_PREFIXES = ("bert.", "roberta.", "model.")
# Kept as read and written back: weights transformers' BertModel has but dense retrieval does not use.
CARRIED = re.compile(r"^(pooler\..*|embeddings\.position_ids|embeddings\.token_type_ids)$")
BASE_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel", "xlm-roberta": "XLMRobertaModel",
                "camembert": "CamembertModel"}


@dataclass
class LoadedEncoder:
    """An encoder read from a folder: the module, its Hugging Face config, and the carried-through weights."""

    module: Encoder
    hf_config: dict
    carried: dict[str, np.ndarray] = field(default_factory=dict)


def checkpoint_name(path: tuple) -> str:
    """The Hugging Face key of an encoder parameter path ('encoder', 'layer', 0, ..., 'kernel')."""
    *module, leaf = (str(part) for part in path)
    leaf = {"kernel": "weight", "embedding": "weight", "scale": "weight"}.get(leaf, leaf)
    return ".".join([*module, leaf])


def canonical_key(key: str) -> str:
    """A checkpoint key as transformers 5 names it: no base-model prefix, LayerNorm gamma/beta as weight/bias."""
    for prefix in BASE_PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key))


def read_weights(path_or_name: str, cache_dir: str | None = None) -> dict[str, np.ndarray]:
    """Every tensor of a model folder (or hub repo) as float32 numpy arrays, by canonical key."""
    index = find_model_file(path_or_name, SAFETENSORS_INDEX, cache_dir)
    single = find_model_file(path_or_name, SAFETENSORS_FILE, cache_dir)
    if index is not None or single is not None:
        from safetensors.flax import load_file

        files = [single] if index is None else sorted(
            {find_model_file(path_or_name, name, cache_dir) for name in json.loads(index.read_text())["weight_map"]
             .values()})
        tensors = {}
        for file in files:
            tensors.update({key: np.asarray(value.astype(jnp.float32) if jnp.issubdtype(value.dtype, jnp.floating)
                                             else value) for key, value in load_file(str(file)).items()})
    else:
        legacy = find_model_file(path_or_name, TORCH_FILE, cache_dir)
        if legacy is None:
            raise RaytevError(f"'{path_or_name}' holds no weights: expected {SAFETENSORS_FILE}, {SAFETENSORS_INDEX} "
                              f"or {TORCH_FILE}.")
        import torch

        state = torch.load(str(legacy), map_location="cpu", weights_only=True)
        tensors = {key: (value.float() if value.is_floating_point() else value).numpy() for key, value in
                   state.items()}
    return {canonical_key(key): value for key, value in tensors.items()
            if not canonical_key(key).startswith(HEAD_PREFIXES) and not key.startswith(HEAD_PREFIXES)}


def load_encoder(path_or_name: str, dtype=None, cache_dir: str | None = None) -> LoadedEncoder:
    """The Flax encoder of a Hugging Face folder; a RaytevError lists any missing or unexpected weights."""
    hf_config = read_model_json(path_or_name, "config.json", cache_dir)
    if hf_config is None:
        raise RaytevError(f"'{path_or_name}' has no config.json: give a Hugging Face model folder or name.")
    config = EncoderConfig.from_hf(hf_config, f"{path_or_name}/config.json")
    weights = read_weights(path_or_name, cache_dir)
    abstract = nnx.eval_shape(lambda: Encoder(config, dtype, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    leaves, wanted = [], set()
    missing = []
    for path, variable in flat:
        name = checkpoint_name(path)
        wanted.add(name)
        if name not in weights:
            missing.append(name)
            leaves.append(variable)
            continue
        value = weights[name].T if path[-1] == "kernel" else weights[name]  # torch Linear stores [out, in]
        if value.shape != variable.shape:
            raise RaytevError(f"{path_or_name}: weight {name} has shape {value.shape}, the config implies "
                              f"{variable.shape}")
        leaves.append(variable.replace(jnp.asarray(value)))
    unexpected = sorted(name for name in weights if name not in wanted and not CARRIED.match(name))
    if missing or unexpected:
        raise RaytevError(f"{path_or_name} does not match a {config.model_type} encoder:"
                          + (f"\n  missing weights: {', '.join(missing[:20])}" if missing else "")
                          + (f"\n  unexpected weights: {', '.join(unexpected[:20])}" if unexpected else "")
                          + "\nIs it a BERT/RoBERTa checkpoint saved by transformers?")
    module = nnx.merge(graphdef, nnx.from_flat_state(list(zip(flat.paths, leaves))))
    carried = {name: value for name, value in weights.items() if CARRIED.match(name)}
    return LoadedEncoder(module, hf_config, carried)


def encoder_tensors(params: nnx.State, carried: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Hugging Face tensors (float32, torch layout) of encoder parameters, plus the carried-through ones."""
    tensors = dict(carried)
    for path, variable in nnx.to_flat_state(params):
        value = np.asarray(jax.device_get(variable.get_value() if hasattr(variable, "get_value") else variable),
                           dtype=np.float32)
        tensors[checkpoint_name(path)] = np.ascontiguousarray(value.T if path[-1] == "kernel" else value)
    return tensors


def save_encoder(directory: str | Path, params: nnx.State, hf_config: dict, carried: dict[str, np.ndarray],
                 max_shard_size: int = MAX_SHARD_SIZE) -> None:
    """Write config.json and safetensors (sharded with an index past max_shard_size) into `directory`."""
    from huggingface_hub import split_state_dict_into_shards_factory
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = encoder_tensors(params, carried)
    config = {**hf_config, "architectures": [BASE_CLASSES[hf_config["model_type"]]], "dtype": "float32"}
    config.pop("torch_dtype", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    split = split_state_dict_into_shards_factory(tensors, get_storage_size=lambda array: array.nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: tensors[name] for name in names}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(array.nbytes for array in tensors.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")

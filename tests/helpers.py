"""Test building blocks: a tiny offline tokenizer and BERT, small data files in raytev's formats, an installed
wheel's metadata (a faiss build), a free port."""

from __future__ import annotations

import gzip
import json
import socket
import string
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizer

TINY_WORDS = ["what", "is", "a", "cat", "dog", "the", "of", "and", "small", "animal", "barks", "query", "passage"]
# Letters as word pieces, so that any lowercase word tokenizes.
TINY_VOCAB = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, *string.ascii_lowercase,
                                 *(f"##{letter}" for letter in string.ascii_lowercase), *string.digits,
                                 *string.punctuation]))


def tiny_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer over TINY_VOCAB, built without any download."""
    # transformers 5 takes the vocabulary itself (token -> id), not a vocab file.
    return BertTokenizer(vocab={token: index for index, token in enumerate(TINY_VOCAB)}, do_lower_case=True)


def write_tiny_tokenizer(directory: Path) -> Path:
    """Save the tiny tokenizer into a folder."""
    directory.mkdir(parents=True, exist_ok=True)
    tiny_tokenizer().save_pretrained(str(directory))
    return directory


def tiny_bert(dropout: float = 0.0, seed: int = 0) -> BertModel:
    """A 2-layer, 32-wide random BERT over TINY_VOCAB (deterministic for a seed), in train mode."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=256,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
    )
    return BertModel(config).train()


def save_tiny_bert(folder: Path, dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny BERT and its tokenizer as a plain Hugging Face folder."""
    tiny_bert(dropout, seed).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(str(folder))
    return folder


def tiny_decoder(kind: str = "llama", dropout: float = 0.0, seed: int = 0):
    """A 2-layer, 32-wide random Llama or Qwen2 over TINY_VOCAB (deterministic for a seed), in train mode."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    torch.manual_seed(seed)
    config_class, model_class = {"llama": (LlamaConfig, LlamaModel), "qwen2": (Qwen2Config, Qwen2Model)}[kind]
    config = config_class(vocab_size=len(TINY_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          attention_dropout=dropout, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return model_class(config).train()


def save_tiny_decoder(folder: Path, kind: str = "llama", dropout: float = 0.0, seed: int = 0) -> Path:
    """Save a tiny decoder and a tokenizer whose EOS is [SEP] (what --append_eos_token appends)."""
    tiny_decoder(kind, dropout, seed).save_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(str(folder))
    return folder


def write_jsonl(path: Path, records: list, compress: bool = False) -> Path:
    """Write records (dicts, or raw strings written as they are) one per line."""
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def make_tiny_beir(parent: Path) -> Path:
    """A BEIR folder under `parent`: 12 passages, 4 queries, train and test qrels."""
    root = parent / "tiny-beir"
    write_jsonl(root / "corpus.jsonl.gz", [
        {"_id": f"d{i}", "title": f"title {i}", "text": f"a small animal {i} barks", "metadata": {}}
        for i in range(12)
    ], compress=True)
    write_jsonl(root / "queries.jsonl", [{"_id": f"q{i}", "text": f"what is a cat {i}"} for i in range(4)])
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq0\td1\t1\nq1\td2\t1\n"
                                              "q2\td3\t0\n")
    (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq3\td4\t1\n")
    return root


def passage(docid: str, text: str, title: str = "") -> dict:
    """A Tevatron passage object."""
    return {"docid": docid, "title": title, "text": text}


def group(query_id: str, query: str, positives: list[dict], negatives: list[dict], **extra) -> dict:
    """A Tevatron training group."""
    return {"query_id": query_id, "query": query, "positive_passages": positives, "negative_passages": negatives,
            **extra}


def toy_training_groups(count: int, negatives: int = 3) -> list[dict]:
    """`count` distinct training groups over the tiny vocabulary: query i's positive mentions i."""
    animals = ["cat", "dog", "animal"]
    return [group(f"q{i}", f"what is the {animals[i % 3]} {i}", [passage(f"p{i}", f"the {animals[i % 3]} {i}")],
                  [passage(f"n{i}-{j}", f"a small {animals[(i + j + 1) % 3]} {i * 7 + j}") for j in range(negatives)])
            for i in range(count)]


GPU_WHEEL = ("faiss-gpu-cu12", "1.14.1.post1")  # what `pip install "raytev[gpu]"` brings (its newest wheel)


def fake_distribution(folder: Path, name: str, version: str, top_level: str | None = None,
                      files: tuple[str, ...] = ("faiss/__init__.py", "faiss/_swigfaiss.so")) -> Path:
    """An installed wheel's metadata folder (METADATA, RECORD, optionally top_level.txt), as pip leaves it."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "RECORD").write_text("".join(f"{path},,\n" for path in (*files, f"{info.name}/METADATA")))
    if top_level is not None:
        (info / "top_level.txt").write_text(top_level)
    return info


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make_config(config_class, **flags):
    """A stage config from flags, as the CLI and the Python API build it (required flags checked)."""
    from raytev.config.fields import from_flags

    return from_flags(config_class, flags, "test")


def resolved(model_path, **flags):
    """The ResolvedModel a stage would make from these model/text flags."""
    from raytev.config.stages import PrepareConfig
    from raytev.model.resolved import resolve_model

    config = make_config(PrepareConfig, model_name_or_path=str(model_path), **flags)
    return resolve_model(config.model, config.text)


def save_tiny_sentence_transformer(folder: Path, prompts: dict | None = None, max_seq_length: int = 64) -> Path:
    """A sentence-transformers folder over the tiny BERT: mean pooling, Normalize, and the given prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    bert = save_tiny_bert(folder.parent / f"{folder.name}-bert")
    transformer = Transformer(str(bert), max_seq_length=max_seq_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, Normalize()], prompts=prompts or {},
                        device="cpu").save(str(folder))
    return folder

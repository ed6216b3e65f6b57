"""Hugging Face dataset names (`Tevatron/msmarco-passage`, `name/split`, `name:config`), loaded for people online."""

from __future__ import annotations

from dataclasses import dataclass

from raytev.errors import RaytevError


@dataclass(frozen=True)
class HubDataset:
    """A dataset on the Hugging Face hub, with its config and split."""

    name: str
    config: str | None
    split: str

    @property
    def label(self) -> str:
        """How problems name this dataset (in place of a file name)."""
        config = f":{self.config}" if self.config else ""
        return f"{self.name}{config}/{self.split}"

    @classmethod
    def parse(cls, name: str, config: str | None, split: str) -> HubDataset:
        """Split Tevatron-style `org/name/split` and `org/name:config` into their parts."""
        parts = name.split("/")
        if len(parts) == 3:
            name, split = "/".join(parts[:2]), parts[2]
        if ":" in name:
            name, config = name.split(":", 1)
        return cls(name, config or None, split)

    def load(self, cache_dir: str | None = None):
        """The split as a `datasets.Dataset`; offline or unknown names fail with what to do instead."""
        import datasets

        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, cache_dir=cache_dir)
        except Exception as error:  # offline, missing, gated and bad splits raise many different types
            raise RaytevError(
                f"could not load the Hugging Face dataset '{self.label}' "
                f"({type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}).\n"
                "Offline, or for a dataset you have as files, pass local files instead: --dataset_path "
                "with a Tevatron training JSONL, a corpus/queries JSONL or TSV, or a BEIR folder; "
                "or use the bundled dataset with --dataset_name scifact."
            ) from None

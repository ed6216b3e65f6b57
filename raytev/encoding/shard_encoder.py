"""One output shard per call: read its rows of the token table, encode them, write the shard file where it runs.

Encoding actors run this, so vectors go from each actor straight to storage instead of through the driver; the
driver only hears (shard, rows) back and records the shard in the manifest. `--num_actors 0` calls it in-process.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from raytev.encoding.batch_encoder import BatchEncoder
from raytev.encoding.embeddings import check_shared_folder, write_shard_file


class ShardEncoder:
    """Encodes whole shards (rows `low` to `high` of the token table) into files of the output folder; one per actor.

    `encoder_options` are BatchEncoder's (model, is_query, id_column, batch_size, pad_token_id, device, ...).
    """

    def __init__(self, table_files: list[str], output: str, dim: int, **encoder_options):
        check_shared_folder(output)  # before loading a model whose vectors could not be written
        self.output, self.dim = output, dim
        self.columns = ["row", encoder_options["id_column"], "input_ids"]
        # Row-group statistics of `row` let a range read skip every other row group and file.
        self.table = pads.dataset(table_files, format="parquet")
        self.encoder = BatchEncoder(**encoder_options)

    def encode_shard(self, index: int, low: int, high: int) -> tuple[int, int]:
        """Encode rows [low, high) into shard `index` (complete or absent); return (index, rows), so that results
        arriving out of order say which shard they finished."""
        rows = read_row_range(self.table, self.columns, low, high)
        encoded = self.encoder({name: rows.column(name).to_numpy(zero_copy_only=False) for name in self.columns})
        return index, write_shard_file(self.output, index, rows.column(self.columns[1]).combine_chunks(),
                                       encoded["embedding"], self.dim)


def read_row_range(table: pads.Dataset, columns: list[str], low: int, high: int) -> pa.Table:
    """Rows [low, high) of a token table, in row order; fails unless each row is there exactly once."""
    field = pads.field("row")
    rows = table.to_table(columns=columns, filter=(field >= low) & (field < high)).sort_by("row")
    if not np.array_equal(rows.column("row").to_numpy(), np.arange(low, high)):
        raise RuntimeError(f"the token table's rows {low}..{high} are not each there once ({rows.num_rows} found): "
                           "its cache folder changed during encoding; run `raytev data prepare` again")
    return rows

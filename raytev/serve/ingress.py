"""The ingress deployment: HTTP in, query encoder and index shards called, their top-k merged, JSON out."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
from ray import serve

from raytev.serve.front import front_of_this_process
from raytev.serve.http import make_api
from raytev.serve.merge import merge_shard_hits
from raytev.serve.messages import EncodeCall, SearchCall
from raytev.serve.passages import read_passages
from raytev.serve.plan import Plan, SwapInProgress, choose_plan
from raytev.serve.swap import Swapper
from raytev.serve.validation import Limits, RequestError, SearchQuery, check_dimension

ATTEMPTS = 4  # a request whose version was released meanwhile is answered again from a fresh plan
REFRESH_S = 0.2  # at most this often, the plan follows replicas that report a newer current version


def corpus_key(config: dict) -> str:
    """What names a loaded corpus: its location and the revision label."""
    return json.dumps({"corpus": config.get("corpus"), "revision": config.get("revision", "")}, sort_keys=True)


def load_corpus(config: dict) -> tuple[str | None, dict[str, tuple[str, str]] | None]:
    """(the corpus named, docid -> (title, text)); (None, None) when the service returns no texts."""
    return (config["corpus"], read_passages(config["corpus"])) if config.get("corpus") else (None, None)


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """Routes of make_api over the shards (in row order) and the query encoder (None: vectors only)."""

    def __init__(self, shards: list, encoder, limits: dict, token_sha256: str | None = None):
        self.shards, self.encoder = shards, encoder
        self.limits, self.token_sha256 = Limits(**limits), token_sha256
        self.text_queries = encoder is not None
        self.corpora: Swapper[tuple[str | None, dict | None]] = Swapper(load_corpus, "corpus")
        self.plan: Plan | None = None
        self._views: list[dict] = []
        self.checked_at = 0.0

    def __serve_build_asgi_app__(self):
        """The FastAPI app, built in the replica so that it holds this replica's settings."""
        return make_api(self, self.limits, self.token_sha256)

    async def reconfigure(self, config: dict) -> None:
        """Load a new corpus (in the background once serving)."""
        await self.corpora.configure(corpus_key(config), config)

    async def search(self, query: SearchQuery) -> list[list[dict]]:
        """Hits per query from one index version (and the model it was built for) on every shard."""
        for attempt in range(ATTEMPTS):
            try:
                plan = self.plan or await self._refresh()
            except SwapInProgress:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            check_dimension(query, plan.dim)
            vectors, model_current = query.vectors, None
            if query.texts is not None:
                encoded = await self.encoder.encode.remote(EncodeCall(query.texts, plan.model_key))
                if encoded.model_key is None:
                    self.plan = None
                    continue
                vectors, model_current = encoded.vectors, encoded.current
                if vectors.shape[1] != plan.dim:
                    raise RequestError(500, f"the query model gives {vectors.shape[1]}-dimensional vectors but the "
                                            f"index holds {plan.dim}-dimensional ones: serve the model the index "
                                            "was encoded with.")
            answers = await asyncio.gather(*(shard.search.remote(SearchCall(vectors, query.k, plan.index_key))
                                             for shard in self.shards))
            if any(answer.index_key is None for answer in answers):
                self.plan = None
                continue
            newer = any(answer.current != plan.index_key for answer in answers) or \
                (model_current is not None and model_current != plan.model_key)
            if newer and time.monotonic() - self.checked_at > REFRESH_S:
                self.plan = None  # a replica switched: the next request looks for a newer common version
            scores, docids = merge_shard_hits([(answer.scores, answer.docids) for answer in answers], query.k)
            return self._hits(scores, docids)
        raise RequestError(503, "the index is being swapped and no version was held everywhere; retry.")

    async def info(self) -> dict:
        """What is served now, with the last failed swaps."""
        try:
            plan = await self._refresh()
        except SwapInProgress as error:
            raise RequestError(503, f"{error}; retry.") from None
        errors = [view["error"] for view in self._views if view.get("error")]
        corpus = self.corpora.versions.get()
        return {"model": plan.model, "dim": plan.dim, "ntotal": plan.ntotal, "shards": len(self.shards),
                "index_type": plan.spec, "index": plan.index, "corpus": corpus[1][0] if corpus else None,
                "text_queries": self.text_queries, "http_front": front_of_this_process(),
                "shard_parts": [{"shard": part["shard"], "rows": part["rows"], "ntotal": part["ntotal"],
                                 "batches": view["batches"], "requests": view["requests"],
                                 "search_seconds": view["search_seconds"]}
                                for part, view in zip(plan.shards, self._views)],
                "swap_errors": errors + ([self.corpora.error] if self.corpora.error else [])}

    async def _refresh(self) -> Plan:
        """Ask every shard (and the encoder) what they hold and choose the versions to answer from."""
        calls = [shard.describe.remote() for shard in self.shards]
        if self.encoder is not None:
            calls.append(self.encoder.describe.remote())
        views = await asyncio.gather(*calls)
        self._views = views
        self.plan = choose_plan(views[:len(self.shards)], views[-1] if self.encoder is not None else None)
        self.checked_at = time.monotonic()
        return self.plan

    def _hits(self, scores: np.ndarray, docids: np.ndarray) -> list[list[dict]]:
        corpus = self.corpora.versions.get()
        passages = corpus[1][1] if corpus else None
        results = []
        for row_scores, row_docids in zip(scores.tolist(), docids.tolist()):
            hits = []
            for score, docid in zip(row_scores, row_docids):
                if docid is None:
                    break  # misses come last
                hit = {"docid": docid, "score": score}
                if passages is not None:
                    title, text = passages.get(docid, (None, None))
                    hit["title"], hit["text"] = title, text
                hits.append(hit)
            results.append(hits)
        return results

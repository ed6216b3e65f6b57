"""The ingress deployment: HTTP in, query encoder and index shards called, their top-k merged, the top of text
queries rescored by the reranker (with one), JSON out, and the corpus whose titles and texts come back with the
hits (a store read with pread: raytev/serving/corpus_store.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve
from ray.exceptions import NodeDiedError, RayActorError, WorkerCrashedError
from ray.serve.exceptions import ReplicaUnavailableError

from raytev.data.formats import Passage, passage_text
from raytev.serving.corpus_store import CorpusStore, corpus_store
from raytev.serving.front import front_of_this_process
from raytev.serving.http import make_api
from raytev.serving.parts import merge_shard_hits
from raytev.serving.replica import EncodeCall, RerankCall, SearchCall, Swapper
from raytev.serving.swaps import AgreedVersions, ReplicaView, SwapInProgress, choose_versions, version_key
from raytev.serving.validation import Limits, RequestError, SearchQuery, check_dimension

TITLE_SEPARATOR = " "  # joins a title and its text for the reranker, as the corpus is tokenized by default
ATTEMPTS = 4  # a request whose version was released meanwhile is answered again with freshly agreed versions
# A call to a replica that died meanwhile (killed, out of memory, its node lost) raises one of these.
REPLICA_LOST = (RayActorError, WorkerCrashedError, NodeDiedError, ReplicaUnavailableError)
REFRESH_S = 0.2  # at most this often, the agreed versions follow replicas that report a newer current version


def load_corpus(user_config: dict) -> tuple[str | None, CorpusStore | None]:
    """(the corpus named, its store); (None, None) when the service returns no texts."""
    corpus = user_config.get("corpus")
    return (corpus, corpus_store(corpus)) if corpus else (None, None)


class SearchIngress:
    """Routes of make_api over the shards (in row order), the query encoder (None: vectors only) and the reranker
    (None: none), which rescores the top `rerank_depth` hits of text queries; the deployment is `Ingress` below
    (this class alone runs in tests without Serve)."""

    def __init__(self, shards: list, encoder, limits: dict, token_sha256: str | None = None, reranker=None,
                 rerank_depth: int = 20):
        self.shards, self.encoder, self.reranker, self.rerank_depth = shards, encoder, reranker, rerank_depth
        self.limits, self.token_sha256 = Limits(**limits), token_sha256
        self.text_queries, self.reranks = encoder is not None, reranker is not None
        self.corpora: Swapper[tuple[str | None, CorpusStore | None]] = Swapper(load_corpus, "corpus")
        self.agreed: AgreedVersions | None = None
        self._views: list[ReplicaView] = []
        self.checked_at = 0.0

    def __serve_build_asgi_app__(self):
        """The FastAPI app, built in the replica so that it holds this replica's settings."""
        return make_api(self, self.limits, self.token_sha256)

    async def reconfigure(self, user_config: dict) -> None:
        """Load a new corpus (in the background once serving)."""
        await self.corpora.configure(version_key(user_config), user_config)

    async def search(self, query: SearchQuery) -> list[list[dict]]:
        """Hits per query from one index version (and the model it was built for) on every shard."""
        lost = None
        for attempt in range(ATTEMPTS):
            try:
                hits = await self._search_once(query)
            except SwapInProgress:
                hits = None
            except REPLICA_LOST as error:
                # A search changes nothing, so asking again is safe: Serve routes the call to a living replica, or
                # holds it until the lost one's replacement runs.
                lost, hits = error, None
                self.agreed = None
            if hits is not None:
                return hits
            await asyncio.sleep(0.05 * (attempt + 1))
        if lost is not None:
            raise RequestError(503, f"a replica of the service was lost ({type(lost).__name__}) and Serve is "
                                    "replacing it; retry.")
        raise RequestError(503, "the index is being swapped and no version was held everywhere; retry.")

    async def _search_once(self, query: SearchQuery) -> list[list[dict]] | None:
        """The hits, or None when a version the request was answered from was released meanwhile (ask again)."""
        agreed = self.agreed or await self._agree()
        check_dimension(query, agreed.dim)
        vectors, model_current = query.vectors, None
        if query.texts is not None:
            encoded = await self.encoder.encode.remote(EncodeCall(query.texts, agreed.model_key))
            if encoded.version is None:
                self.agreed = None
                return None
            vectors, model_current = encoded.vectors, encoded.current
            if vectors.shape[1] != agreed.dim:
                raise RequestError(500, f"the query model gives {vectors.shape[1]}-dimensional vectors but the "
                                        f"index holds {agreed.dim}-dimensional ones: serve the model the index "
                                        "was encoded with.")
        rerank = self.reranker is not None and query.texts is not None and query.rerank
        fetch = max(query.k, self.rerank_depth) if rerank else query.k
        answers = await asyncio.gather(*(shard.search.remote(SearchCall(vectors, fetch, agreed.index_key))
                                         for shard in self.shards))
        if any(answer.version is None for answer in answers):
            self.agreed = None
            return None
        newer = any(answer.current != agreed.index_key for answer in answers) or \
            (model_current is not None and model_current != agreed.model_key)
        if newer and time.monotonic() - self.checked_at > REFRESH_S:
            self.agreed = None  # a replica switched: the next request looks for a newer common version
        scores, docids = merge_shard_hits([(answer.scores, answer.docids) for answer in answers], fetch)
        hits = self._hits(scores, docids)
        if rerank:
            hits = [row[:query.k] for row in await self._rerank(query.texts, hits)]
        return hits

    async def _rerank(self, texts: list[str], hits: list[list[dict]]) -> list[list[dict]]:
        """Each query's top `rerank_depth` hits (those with a text) rescored and reordered by the reranker, the
        others after them in the retriever's order."""
        chosen = [[hit for hit in row[:self.rerank_depth] if hit.get("text") is not None] for row in hits]
        passages = [[passage_text(Passage(hit["docid"], hit["title"] or "", hit["text"]), TITLE_SEPARATOR)
                     for hit in row] for row in chosen]
        answer = await self.reranker.rerank.remote(RerankCall(texts, passages))
        reranked = []
        for row, row_chosen, scores in zip(hits, chosen, answer.scores):
            for hit, score in zip(row_chosen, scores.tolist()):
                hit["score"], hit["stage"] = score, "reranker"
            ids = {id(hit) for hit in row_chosen}
            best = sorted(row_chosen, key=lambda hit: -hit["score"])  # stable: ties keep the retriever's order
            reranked.append(best + [hit for hit in row if id(hit) not in ids])
        return reranked

    async def info(self) -> dict:
        """What is served now, with the last failed swaps."""
        try:
            agreed = await self._agree()
            reranker = await self.reranker.describe.remote() if self.reranker is not None else None
        except SwapInProgress as error:
            raise RequestError(503, f"{error}; retry.") from None
        except REPLICA_LOST as error:
            raise RequestError(503, f"a replica of the service was lost ({type(error).__name__}) and Serve is "
                                    "replacing it; retry.") from None
        errors = [view.error for view in self._views + ([reranker] if reranker else []) if view.error]
        corpus = self.corpora.versions.get()
        first = agreed.shards[0]
        return {"model": agreed.model, "dim": agreed.dim, "ntotal": agreed.ntotal,
                "shards": len(self.shards), "index_type": first.spec, "index": first.index,
                "corpus": corpus[1][0] if corpus else None,
                "text_queries": self.text_queries, "http_front": front_of_this_process(),
                "reranker": reranker.held[0].model if reranker and reranker.held else None,
                "rerank_depth": self.rerank_depth if reranker else None,
                "shard_parts": [{"shard": view.shard, "rows": list(part.rows) if part.rows else None,
                                 "ntotal": part.ntotal, "batches": view.batches, "requests": view.requests,
                                 "search_seconds": view.search_seconds}
                                for part, view in zip(agreed.shards, self._views)],
                "swap_errors": errors + ([self.corpora.error] if self.corpora.error else [])}

    async def _agree(self) -> AgreedVersions:
        """Ask every shard (and the encoder) what they hold and choose the versions to answer from."""
        calls = [shard.describe.remote() for shard in self.shards]
        if self.encoder is not None:
            calls.append(self.encoder.describe.remote())
        views = await asyncio.gather(*calls)
        self._views = views
        self.agreed = choose_versions(views[:len(self.shards)], views[-1] if self.encoder is not None else None)
        self.checked_at = time.monotonic()
        return self.agreed

    def _hits(self, scores: np.ndarray, docids: np.ndarray) -> list[list[dict]]:
        corpus = self.corpora.versions.get()
        store = corpus[1][1] if corpus else None
        results = [[{"docid": docid, "score": score, "stage": "retriever"}
                    for score, docid in zip(row_scores, row_docids)
                    if docid is not None]  # misses come last
                   for row_scores, row_docids in zip(scores.tolist(), docids.tolist())]
        if store is not None:
            hits = [hit for row in results for hit in row]
            for hit, (title, text) in zip(hits, store.passages([hit["docid"] for hit in hits])):
                hit["title"], hit["text"] = title, text
        return results


Ingress = serve.deployment(name="Ingress")(serve.ingress()(SearchIngress))

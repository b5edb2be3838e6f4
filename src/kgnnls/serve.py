"""HTTP serving of a trained model with FastAPI (``kgnnls serve RUN``).

Endpoints: ``GET /health``, ``GET /recommend?user=U&k=10``, ``POST
/recommend/batch`` (several users' top-k in one ranking call), ``POST /score``
(a batch of pairs scored in one call), ``GET /explain?user=U&item=I``; the
OpenAPI page is at ``/docs``. The model is loaded once; calls into it are
serialized by a lock (the compiled kernels are not re-entrant, and a call
takes well under a millisecond to a few milliseconds). Inputs are bounded:
``k`` is capped, a score request holds at most ``max_pairs`` pairs, a batch
request at most ``max_batch_users`` users and a body at most
``max_body_bytes``; bad input gets a 4xx JSON error, never a 500.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from kgnnls._version import __version__
from kgnnls.device import network_device
from kgnnls.errors import KgnnlsError


class Pair(BaseModel):
    user: str = Field(max_length=256, description="original user id")
    item: str = Field(max_length=256, description="original item id")


class ScoreRequest(BaseModel):
    pairs: list[Pair] = Field(min_length=1, description="user-item pairs to score")


class ScoredItem(BaseModel):
    item: str
    score: float = Field(description="predicted engagement probability")


class Recommendation(BaseModel):
    user: str
    items: list[ScoredItem]


class Scores(BaseModel):
    scores: list[float]


class BatchRequest(BaseModel):
    users: list[Annotated[str, Field(max_length=256)]] = Field(
        min_length=1, description="original user ids")
    k: int = Field(10, ge=1, description="items per user (capped by the server's max_k)")
    filter_seen: bool = Field(True, description="leave out the users' training positives")


class BatchRecommendations(BaseModel):
    results: list[Recommendation]


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 JSON error.

    A declared ``Content-Length`` is checked before anything is read; a body
    without one (chunked) is counted as it streams in, and reading stops at
    the limit, so an oversized body is never held in memory.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body larger than {self.max_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await JSONResponse({"detail": too_large}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # FastAPI re-raises it; it becomes a JSON 413
                raise HTTPException(status_code=413, detail=too_large)
            return message

        await self.app(scope, counted, send)


def create_app(model: Any, max_k: int = 1000, max_pairs: int = 10_000,
               max_body_bytes: int = 1 << 20, max_batch_users: int = 1000) -> FastAPI:
    """A FastAPI app serving ``model`` (a fitted or loaded ``kgnnls.KGNNLS``)."""
    app = FastAPI(title="kgnnls", version=__version__,
                  description="KGNN-LS recommendations, scores and explanations.")
    lock = threading.Lock()
    n_items = len(model.item_ids)

    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.exception_handler(KgnnlsError)
    async def input_error(request: Request, exc: KgnnlsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """Liveness and what is being served."""
        return {"status": "ok", "model": model.config.model, "variant": model.config.variant,
                "dataset": model.info.get("dataset"), "users": len(model.user_ids),
                "items": n_items, "version": __version__,
                "device": network_device(model.network).type}

    @app.get("/recommend", response_model=Recommendation)
    def recommend(user: str = Query(max_length=256, description="original user id"),
                  k: int = Query(10, ge=1, le=max_k, description=f"1..{max_k}"),
                  exclude_seen: bool = True) -> Recommendation:
        """Top-k items for a user, training positives excluded by default."""
        with lock:
            recs = model.recommend(user, k=min(k, n_items), exclude_seen=exclude_seen)
        return Recommendation(user=user, items=[ScoredItem(item=i, score=s) for i, s in recs])

    @app.post("/recommend/batch", response_model=BatchRecommendations)
    def recommend_batch(request: BatchRequest) -> BatchRecommendations:
        """Top-k items for each of several users, ranked together (one user's result
        equals ``GET /recommend`` for that user)."""
        if len(request.users) > max_batch_users:
            return JSONResponse({"detail": f"at most {max_batch_users} users per request, got "
                                           f"{len(request.users)}"}, status_code=413)
        if request.k > max_k:
            return JSONResponse({"detail": f"k must be at most {max_k}, got {request.k}"},
                                status_code=422)
        with lock:
            items, scores = model.recommend(request.users, k=min(request.k, n_items),
                                            filter_seen=request.filter_seen)
        return BatchRecommendations(results=[
            Recommendation(user=u, items=[ScoredItem(item=i, score=float(s))
                                          for i, s in zip(row, row_scores, strict=True) if i])
            for u, row, row_scores in zip(request.users, items, scores, strict=True)])

    @app.post("/score", response_model=Scores)
    def score(request: ScoreRequest) -> Scores:
        """Probabilities for a batch of (user, item) pairs, in order."""
        if len(request.pairs) > max_pairs:
            return JSONResponse({"detail": f"at most {max_pairs} pairs per request"},
                                status_code=413)
        users = [p.user for p in request.pairs]
        items = [p.item for p in request.pairs]
        with lock:
            values = model.score(users, items)
        return Scores(scores=[float(v) for v in values])

    @app.get("/explain")
    def explain(user: str = Query(max_length=256), item: str = Query(max_length=256),
                top: int = Query(5, ge=1, le=50)) -> dict[str, Any]:
        """Relation importance, influential KG neighbours and label evidence."""
        with lock:
            return model.explain(user, item, top=top).to_dict()

    return app


def serve(run_dir: str, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          device: str = "auto", **limits: Any) -> None:
    """Load ``run_dir`` once and serve it with uvicorn (blocks); ``device``: where the
    model ranks (``KGNNLS.load``: ``auto`` keeps it where it trained, if a GPU is visible)."""
    import uvicorn

    from kgnnls.recommender import KGNNLS

    app = create_app(KGNNLS.load(run_dir, device=device), **limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

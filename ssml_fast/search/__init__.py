"""The retrieval service: index a folder of images with a trained checkpoint, search it.

    from ssml_fast.search import Index, build_index
    index = build_index("runs/supervised-mnist5k/last.pt", "photos/", "photos.index")
    results = index.search(["query.jpg"], k=10, rerank=True)
    index.add("more_photos/"); index.save()
    index = Index.load("photos.index")

This package sits above `ssml_fast.train` (it loads trained checkpoints). Its names are imported lazily
(PEP 562), so importing a lower-level module of this package never pulls in the trainer.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "AddReport": "service", "Index": "service", "SearchResult": "service", "build_index": "service",
    "images_of": "service",
    "IndexPlan": "faiss_index", "plan_index": "faiss_index", "FLAT_MAX": "faiss_index",
    "EvalTransform": "images", "IMAGE_EXTENSIONS": "images", "list_images": "images",
    "RerankParams": "reranking",
    "save_grid": "grid",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return __all__

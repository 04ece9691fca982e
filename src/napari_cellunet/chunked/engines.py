"""Where block tasks run: a local thread pool, or a ``dask.distributed`` cluster.

Cluster workers rebuild the model once per process from :func:`model_payload`
(:func:`worker_model`); blocks of sources that workers cannot read (numpy, dask,
in-memory zarr) are read by the client and shipped with the task.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import replace

import torch

from ..models import CellModel
from ..zarrio import read_region
from .compute import compute_block
from .plan import _Block

_WORKER_MODELS: dict[str, CellModel] = {}
_WORKER_LOCK = threading.Lock()


def model_payload(model: CellModel) -> dict:
    """What a cluster worker needs to rebuild ``model`` (config, metadata, weights as numpy)."""
    state = {k: v.detach().cpu().numpy() for k, v in model.net.state_dict().items()}
    return {"token": uuid.uuid4().hex, "name": model.name, "config": model.config.to_dict(),
            "meta": dict(model.meta), "state": state}


def worker_model(payload: dict) -> CellModel:
    """Build the model once per worker process (cached by the payload's token)."""
    from ..unet import UNet, UNetConfig

    with _WORKER_LOCK:
        if payload["token"] not in _WORKER_MODELS:
            net = UNet(UNetConfig.from_dict(payload["config"]))
            net.load_state_dict({k: torch.from_numpy(v) for k, v in payload["state"].items()})
            _WORKER_MODELS.clear()
            _WORKER_MODELS[payload["token"]] = CellModel(payload["name"], net.eval(), payload["meta"])
        return _WORKER_MODELS[payload["token"]]


def _remote_block(b: _Block, payload: dict, source) -> dict:
    return compute_block(b, worker_model(payload), source)


class _Engine:
    """Runs block tasks: a local thread pool, or a ``distributed`` client (futures)."""

    def __init__(self, model: CellModel, source, client=None, workers: int | None = None):
        self.own, self.client, self.model, self.source = [], client, model, source
        if client is None:
            from concurrent.futures import ThreadPoolExecutor

            self.slots = max(1, workers or min(2, os.cpu_count() or 1))
            self.pool = ThreadPoolExecutor(self.slots, thread_name_prefix="cellunet-block")
            self.name = f"threads ({self.slots})"
            return
        from distributed import Client, LocalCluster

        if isinstance(client, int):
            import dask

            # distributed's default MALLOC_TRIM_THRESHOLD_=65536 makes every big numpy temporary fault its pages
            # in anew: blocks ran 2-3x slower than in threads. Blocks are bounded, so freed memory may stay.
            with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
                cluster = LocalCluster(n_workers=client, threads_per_worker=1, processes=True,
                                       dashboard_address=None)
            self.own = [Client(cluster), cluster]
            self.client = self.own[0]
        elif isinstance(client, str):
            self.own = [Client(client)]
            self.client = self.own[0]
        nthreads = self.client.nthreads()
        self.slots = max(1, sum(nthreads.values()))
        self.name = f"distributed ({len(nthreads)} workers)"
        self.payload = self.client.scatter(model_payload(model), broadcast=True, hash=False)
        import zarr

        remote = isinstance(source, zarr.Array) and type(source.store).__name__ != "MemoryStore"
        self.remote_source = source if remote else None

    def submit(self, b: _Block):
        if self.client is None:
            return self.pool.submit(compute_block, b, self.model, self.source)
        if self.remote_source is None:  # the client reads what workers cannot reach
            b = replace(b, raw=read_region(self.source, b.read_index))
        return self.client.submit(_remote_block, b, self.payload, self.remote_source, pure=False)

    def wait_one(self, futures: set) -> set:
        if self.client is None:
            from concurrent.futures import FIRST_COMPLETED, wait
        else:
            from distributed import wait
            FIRST_COMPLETED = "FIRST_COMPLETED"
        return set(wait(futures, return_when=FIRST_COMPLETED).done)

    def close(self, futures=()) -> None:
        for f in futures:
            f.cancel()
        if self.client is None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        for obj in self.own:
            obj.close()

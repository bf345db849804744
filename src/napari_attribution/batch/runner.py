"""Whole-plate batch runs on Dask distributed: resumable, fault tolerant, OME-Zarr out.

:func:`run_batch` is a generator of :class:`Progress` events returning a
:class:`BatchResult`. It opens (or resumes) the result store, sends the images that are
not done yet to Dask workers a few at a time, and, once every image is stored, writes
the per-image and per-well CSV tables and marks the store complete.

Safety rests on the store: an image counts as done only when its ``done`` chunk is
written, after all its outputs; tasks skip done images, so work re-run after a worker
died is never duplicated, and a rerun after a crash or Ctrl-C computes only what is
missing. The run fingerprint (bundle sha256, methods and parameters, image list)
refuses to resume a store made by a different run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..core.runtime.errors import AttributionError, InputError
from ..core.runtime.progress import Progress
from .lock import StoreLock
from .records import ImageRecord, check_records, record_shape
from .store import BatchStore, run_payload
from .task import TaskSpec, process_images

log = logging.getLogger(__name__)


def _lost_workers(client: Any, known: set[str]) -> tuple[list[str], set[str]]:
    """Workers in ``known`` that left the cluster (died; a nanny may have started a
    replacement under a new address), logged as warnings, and the current set."""
    try:
        now = set(client.scheduler_info(n_workers=-1)["workers"])
    except Exception:  # the scheduler is busy or gone: report at the next event
        return [], known
    lost = sorted(known - now)
    for address in lost:
        log.warning("batch: worker %s died; its unfinished images are recomputed by the "
                    "other workers (finished ones are kept)", address)
    return lost, now


class BatchIncomplete(AttributionError):
    """Some images could not be processed; finished ones are kept for a rerun."""


@dataclass
class BatchConfig:
    """What to compute per image. Predictions are always computed; ``methods`` add maps.

    ``params`` maps a method name to its keyword parameters (see ``core.attribution``);
    ``target`` None explains each image's predicted class; ``input_size`` tiles images
    larger than the model's training size; ``images_per_task`` is how many images one
    Dask task handles (default ``batch_size``). ``downsample`` shrinks every field by
    block averaging before the model sees it, as the crops of a model trained with
    ``downsample`` were (maps are then at that resolution, scaled back in napari);
    None takes the factor recorded in the bundle (``train --plate``), else 1.
    ``regions``: compute fields region by region (``batch.regions``: opened lazily,
    never whole in memory) — None does so for fields over 256 MiB of float32 pixels;
    ``region_size`` is the side of a region in pixels. ``evidence``: the evidence check
    on the first method's maps (14 forward passes per image or tile).
    """

    methods: Sequence[str] = ()
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_channel: bool = False
    target: int | str | None = None  # an index or class name (resolved by run_batch)
    input_size: int | None = None
    device: str = "auto"
    batch_size: int = 16
    images_per_task: int | None = None
    downsample: int | None = None
    regions: bool | None = None
    region_size: int = 1024
    #: run the evidence check (``core.attribution.evidence``) on the first method's maps
    #: of every image computed whole (not region by region); the states per image and
    #: their findings come back in ``BatchResult.evidence`` / ``findings``
    evidence: bool = False

    def method_params(self) -> dict[str, dict[str, Any]]:
        """Validated ``{method: params}`` in the order given."""
        methods = list(dict.fromkeys(self.methods))
        if methods:
            from ..core.attribution.explain import available_methods

            unknown = [m for m in methods if m not in available_methods()]
            if unknown:
                raise InputError(f"unknown attribution method(s) {unknown}; choose from "
                                 f"{available_methods()}")
        extra = sorted(set(self.params) - set(methods))
        if extra:
            raise InputError(f"parameters given for method(s) {extra} that are not run "
                             f"(methods: {methods or 'none'})")
        if methods:
            from ..core.attribution.explain import check_method_params

            for m in methods:
                check_method_params(m, self.params.get(m, {}))
        if self.batch_size < 1 or (self.images_per_task is not None
                                   and self.images_per_task < 1):
            raise InputError("batch_size and images_per_task must be at least 1")
        if self.region_size < 1:
            raise InputError(f"region_size must be at least 1; got {self.region_size}")
        if self.downsample is not None and self.downsample < 1:
            raise InputError(f"downsample must be a whole number >= 1; got {self.downsample}")
        return {m: dict(self.params.get(m, {})) for m in methods}


@dataclass
class BatchResult:
    """Where the results are and how the run went."""

    store_path: Path
    table_path: Path
    wells_path: Path
    n_images: int
    n_computed: int
    n_skipped: int
    seconds: float
    compute_seconds: float
    n_workers: int
    fingerprint: str
    #: plain warnings about the plan (e.g. black-box PCIM's coarse grid on whole fields)
    warnings: list[str] = field(default_factory=list)
    #: the evidence check's state per image index computed in this run (``evidence=True``)
    evidence: dict[int, str] = field(default_factory=dict)
    #: findings of this run (``evidence-none``, ``evidence-undetermined``)
    findings: list = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        """Images computed per second of cluster work (0 when nothing was computed)."""
        return self.n_computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def open(self) -> BatchStore:
        return BatchStore.open(self.store_path)


def _evidence_findings(evidence: dict[int, str], records: Sequence[Any]) -> list:
    """``evidence-none`` / ``evidence-undetermined`` findings for a run's states."""
    if not evidence:
        return []
    from ..core.attribution.evidence import evidence_findings

    idx = sorted(evidence)
    return evidence_findings({"state": [evidence[i] for i in idx]},
                             [str(records[i].id) for i in idx])


def default_table_paths(output: Path, table: Path | None) -> tuple[Path, Path]:
    """Per-image and per-well CSV paths: beside the store unless ``table`` is given."""
    base = Path(table) if table else output.with_suffix(".csv")
    return base, base.with_name(base.stem + "_wells.csv")


def plan_warnings(config: BatchConfig, methods: Sequence[str], shape: tuple[int, int],
                  regions: bool) -> list[str]:
    """Plain warnings about the methods on what ``explain`` will see of each image of
    ``shape`` (after downsampling): ``input_size`` tiles, a region, or the image."""
    from ..core.attribution.explain import method_warnings

    if config.input_size is not None:
        side = (config.input_size, config.input_size)
    elif regions:
        side = (min(shape[0], config.region_size), min(shape[1], config.region_size))
    else:
        side = shape
    return [w for m in methods for w in method_warnings(m, config.params.get(m, {}), *side)]


@dataclass(frozen=True)
class ClusterOptions:
    """Where a batch run computes: ``client`` (used as is), else ``scheduler`` (address of
    a running cluster; the store, bundle and images must be on storage all workers see),
    else a LocalCluster of ``n_workers`` (default: one per GPU, or per core) with
    ``threads_per_worker`` threads, in processes unless ``processes=False``."""

    client: Any = None
    scheduler: str | None = None
    n_workers: int | None = None
    threads_per_worker: int = 1
    processes: bool = True

    @classmethod
    def build(cls, options: ClusterOptions | None = None,
              overrides: dict[str, Any] | None = None) -> ClusterOptions:
        """``options`` (or the defaults) with keyword ``overrides``; unknown keys raise
        :class:`InputError` naming them."""
        overrides = overrides or {}
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(overrides) - set(known))
        if unknown:
            raise InputError(f"unknown batch option(s) {', '.join(map(repr, unknown))}; "
                             f"cluster options: {', '.join(known)}")
        return replace(options or cls(), **overrides)


@dataclass
class BatchPlan:
    """A batch run resolved once, before any image is computed (:meth:`build`): the
    records, the loaded model, the config with its target, downsampling and input size
    filled in, the validated method parameters, the run's fingerprint payload, the plan's
    warnings and where the results go. ``run_plan`` runs it; the Dask tasks get its
    :meth:`task_spec`."""

    records: list[ImageRecord]
    bundle: Any
    bundle_path: Path
    output: Path
    config: BatchConfig
    methods: dict[str, dict[str, Any]]
    payload: dict[str, Any]
    shape: tuple[int, int]
    warnings: list[str] = field(default_factory=list)
    table: Path | None = None
    trust: bool = False
    overwrite: bool = False
    #: ``time.perf_counter()`` when planning started (the run's seconds count from it)
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def build(cls, records: Sequence[ImageRecord], bundle_path: str | Path,
              output: str | Path, config: BatchConfig | None = None, *,
              table: str | Path | None = None, trust: bool = False,
              overwrite: bool = False) -> BatchPlan:
        """Load the model, check the records against it and resolve the config.
        ``bundle_path``: any model file ``io.models.load_model`` reads; ``trust=True``
        skips its operator scan; ``table``: the per-image CSV (default beside ``output``)."""
        from ..io.models import load_model

        t_start = time.perf_counter()
        config = config or BatchConfig()
        methods = config.method_params()
        records = list(records)
        bundle = load_model(bundle_path, trust=trust)
        if config.target is not None:  # an index, a class name or "predicted"
            target = bundle.resolve_targets(config.target)
            if isinstance(target, list):
                raise InputError("give one target class for a batch run")
            config = replace(config, target=target)
        if config.downsample is None:  # as the model's training crops were, if recorded
            data_info = bundle.provenance.get("data")
            recorded = data_info.get("downsample", 1) if isinstance(data_info, dict) else 1
            config = replace(config, downsample=int(recorded or 1))
        check_records(records, bundle.n_channels)
        names = list(records[0].channel_names)
        if (names and names != bundle.channel_names
                and sorted(names) == sorted(bundle.channel_names)):
            raise InputError(f"the plate's channels are in the order {names} but the model "
                             f"was trained on {bundle.channel_names}; give the channels in "
                             "the model's order")
        first = record_shape(records[0], config.downsample)  # a large image is not read
        bundle.check_channels(first[0], f"the plate's images ({records[0].id})")
        shape = (first[1], first[2])
        scale_notes: list[str] = []
        if config.input_size is None:  # tiles of the model's training size, never one pass
            from ..core.attribution.explain import scale_for

            size, found = scale_for(bundle, shape)
            config = replace(config, input_size=size)
            scale_notes = [f"{f.code}: {f.message}" for f in found]
        if config.input_size is not None and min(shape) < config.input_size:
            raise InputError(f"images are {shape[0]}x{shape[1]} pixels, smaller than "
                             f"input_size {config.input_size}")
        payload = run_payload(bundle.sha256, records, methods, config.per_channel,
                              config.target, shape, config.input_size, config.downsample)
        from .regions import use_regions

        regions = use_regions(first, config.regions)
        if regions:  # region by region: part of what makes the run
            payload["regions"] = {"region_size": config.region_size}
        warnings = scale_notes + plan_warnings(config, methods, shape, regions)
        return cls(records=records, bundle=bundle, bundle_path=Path(bundle_path),
                   output=Path(output), config=config, methods=methods, payload=payload,
                   shape=shape, warnings=warnings, table=Path(table) if table else None,
                   trust=trust, overwrite=overwrite, started=t_start)

    def task_spec(self) -> TaskSpec:
        """What every Dask task needs besides its image indices."""
        c = self.config
        return TaskSpec(bundle_path=str(self.bundle_path.resolve()),
                        bundle_sha256=self.bundle.sha256, store_path=str(self.output.resolve()),
                        methods=self.methods, per_channel=c.per_channel, target=c.target,
                        input_size=c.input_size, device=c.device, batch_size=c.batch_size,
                        image_shape=tuple(self.shape), downsample=c.downsample,
                        trust=self.trust, regions=c.regions, region_size=c.region_size,
                        evidence=bool(c.evidence and self.methods))

    def provenance(self) -> dict[str, Any]:
        """The model, the package and the run's settings, for the store's metadata."""
        return {**_provenance(self.bundle, self.config), "warnings": self.warnings}


def _provenance(bundle: Any, config: BatchConfig) -> dict[str, Any]:
    import platform
    from datetime import datetime, timezone

    import torch

    from .. import __version__

    return {
        **bundle.describe(),  # the model: path, kind, sha256, names, normalisation
        "package": "napari-attribution", "version": __version__,
        "torch_version": torch.__version__, "python": platform.python_version(),
        "bundle_path": str(bundle.path), "bundle_sha256": bundle.sha256,
        "normalization": bundle.normalization, "model_kind": bundle.kind,
        "model_trusted": bool(bundle.trusted),
        "methods": list(config.methods), "params": config.params,
        "per_channel": config.per_channel, "target": config.target,
        "input_size": config.input_size, "batch_size": config.batch_size,
        "downsample": config.downsample, "regions": config.regions,
        "region_size": config.region_size,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_batch(records: Sequence[ImageRecord], bundle_path: str | Path,
              output: str | Path, config: BatchConfig | None = None, *,
              cluster: ClusterOptions | None = None, overwrite: bool = False,
              table: str | Path | None = None, trust: bool = False,
              **cluster_options: Any) -> Generator[Progress, None, BatchResult]:
    """Predictions (and maps) for every record, written to the OME-Zarr store ``output``.

    Plans the run (:meth:`BatchPlan.build`) and runs it (:func:`run_plan`). Cluster:
    ``cluster`` (:class:`ClusterOptions`) and keyword overrides of its fields
    (``client``, ``scheduler``, ``n_workers``, ``threads_per_worker``, ``processes``).
    Rerunning with the same arguments resumes; a store from a different run raises
    :class:`InputError` unless ``overwrite``. ``bundle_path``: any model file
    ``io.models.load_model`` reads; ``trust=True`` skips its operator scan.
    """
    where = ClusterOptions.build(cluster, cluster_options)
    plan = BatchPlan.build(records, bundle_path, output, config, table=table, trust=trust,
                           overwrite=overwrite)
    return (yield from run_plan(plan, where))


def run_plan(plan: BatchPlan, cluster: ClusterOptions | None = None
             ) -> Generator[Progress, None, BatchResult]:
    """Run a planned batch on ``cluster`` with the store's lock held (one run per store)."""
    lock = StoreLock(plan.output).acquire()  # held until this run ends
    try:
        return (yield from _run_locked(plan, cluster or ClusterOptions()))
    finally:
        lock.release()


def _run_locked(plan: BatchPlan, cluster: ClusterOptions
                ) -> Generator[Progress, None, BatchResult]:
    """The run proper, with the store's lock held."""
    from .table import image_rows, well_rows, write_csv

    records, bundle, output, config = plan.records, plan.bundle, plan.output, plan.config
    store = BatchStore.open_for_run(
        output, payload=plan.payload, records=records, channel_names=bundle.channel_names,
        class_names=bundle.class_names, provenance=plan.provenance(),
        overwrite=plan.overwrite)
    n = len(records)
    field_meta = list(store.meta.get("fields") or [None] * n)
    done = store.done_mask()
    todo = [i for i in range(n) if not done[i]]
    n_done = n - len(todo)
    yield Progress(n_done, n, f"{n_done}/{n} images already done" if n_done else
                   f"{n} images to process")
    spec = plan.task_spec()
    computed: set[int] = set()
    evidence: dict[int, str] = {}
    deaths: list[str] = []
    n_workers_used = 0
    t_compute = 0.0
    if todo:
        from .cluster import open_client

        client, release = open_client(cluster.scheduler, cluster.client, cluster.n_workers,
                                      cluster.threads_per_worker, cluster.processes,
                                      config.device)
        futures: list[Any] = []
        try:
            from distributed import as_completed
            from distributed.scheduler import KilledWorker

            workers = set(client.scheduler_info(n_workers=-1)["workers"])
            n_workers_used = len(workers)
            per_task = config.images_per_task or config.batch_size
            t0 = time.perf_counter()
            for s in range(0, len(todo), per_task):
                chunk = todo[s:s + per_task]
                futures.append(client.submit(process_images, spec, chunk,
                                             [records[i] for i in chunk],
                                             [field_meta[i] for i in chunk], pure=False))
            for fut in as_completed(futures):
                try:
                    out = fut.result()
                except KilledWorker as err:
                    log.error("batch %s: workers died repeatedly on a task: %s", output, err)
                    raise BatchIncomplete(
                        f"workers died repeatedly on a task ({err}); finished images are "
                        f"kept in {output}; rerun the same command to resume") from None
                # "skipped" here = finished by an earlier attempt of this task whose
                # worker died before reporting back: done in this run, counted once.
                new = [i for i in out["computed"] + out["skipped"] if i not in computed]
                computed.update(new)
                evidence.update({int(k): v for k, v in (out.get("evidence") or {}).items()})
                n_done += len(new)
                rate = len(computed) / max(time.perf_counter() - t0, 1e-9)
                lost, workers = _lost_workers(client, workers)
                deaths += lost
                note = (f"; worker(s) {', '.join(lost)} died, their images are rerun on "
                        "the others" if lost else "")
                yield Progress(n_done, n, f"{n_done}/{n} images ({rate:.2f}/s){note}",
                               partial={"computed": new, "images_per_second": rate,
                                        "workers_lost": lost})
            t_compute = time.perf_counter() - t0
        finally:
            for fut in futures:
                if not fut.done():
                    fut.cancel()
            release()
    done = store.done_mask()
    if not done.all():
        missing = [records[i].id for i in range(n) if not done[i]]
        raise BatchIncomplete(f"{len(missing)} image(s) have no results ({missing[:5]}); "
                              f"rerun the same command to resume")
    table_path, wells_path = default_table_paths(output, plan.table)
    rows = image_rows(store)
    write_csv(rows, table_path)
    write_csv(well_rows(rows, bundle.class_names), wells_path)
    result = BatchResult(
        store_path=output, table_path=table_path, wells_path=wells_path, n_images=n,
        n_computed=len(computed), n_skipped=n - len(computed),
        seconds=time.perf_counter() - plan.started, compute_seconds=t_compute,
        n_workers=n_workers_used, fingerprint=store.meta["fingerprint"],
        warnings=plan.warnings, evidence=dict(sorted(evidence.items())),
        findings=_evidence_findings(evidence, records))
    store.mark_complete({"table": str(table_path), "wells": str(wells_path),
                         "n_images": n, "last_run_computed": len(computed),
                         "last_run_seconds": round(result.seconds, 3),
                         "workers": n_workers_used, "workers_lost": deaths})
    yield Progress(n, n, f"done: {n} images, table {table_path}")
    return result

"""Batch runs on Dask: equal to the single-process path, resumable, fault tolerant."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")
pytest.importorskip("ome_zarr_models", reason="ome-zarr-models (batch extra) not installed")

from napari_attribution.batch import (  # noqa: E402
    BatchConfig,
    BatchStore,
    open_result,
    records_from_plate,
    run_batch,
)
from napari_attribution.batch.ngff import validate_store  # noqa: E402
from napari_attribution.batch.records import read_record  # noqa: E402
from napari_attribution.core.runtime.errors import BundleError, Cancelled, InputError  # noqa: E402
from napari_attribution.core.runtime.progress import run_generator  # noqa: E402
from ngff_rules import check_plate  # noqa: E402

PATTERN = r"(?P<well>[A-H]\d{2})_s(?P<site>\d+)_(?P<channel>[a-z]+)\.tif$"
CHANNELS = ["dna", "gfp"]
PCIM = {"pcim": {"steps": 4}}


def write_plate(root, wells=("A01", "A02", "B01", "B02"), sites=(1, 2, 3), size=32, seed=0):
    """A tiny plate: one uint16 TIFF per well, site and channel; the GFP channel has a
    bright blob in the B row (the 'phenotype')."""
    import tifffile

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for well in wells:
        for site in sites:
            dna = rng.normal(100, 10, (size, size))
            gfp = rng.normal(50, 5, (size, size))
            if well.startswith("B"):
                cy, cx = rng.integers(8, size - 8, 2)
                gfp += 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18)
            for name, arr in (("dna", dna), ("gfp", gfp)):
                tifffile.imwrite(root / f"{well}_s{site}_{name}.tif",
                                 np.clip(arr, 0, 65535).astype(np.uint16))
    return root


def make_bundle(path, seed=0, n_channels=2):
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(seed)
    model = DCMIXClassifier(ModelConfig(n_channels, 2, width=8)).eval()
    return save_bundle(path, model, CHANNELS[:n_channels], ["neg", "pos"],
                       PercentileNormalizer(mode="per_image"))


def open_plate(root):
    from napari_attribution.io.plate import Plate

    return Plate.scan(root, PATTERN, CHANNELS)


@pytest.fixture(scope="module")
def plate_dir(tmp_path_factory):
    return write_plate(tmp_path_factory.mktemp("plate"))


@pytest.fixture(scope="module")
def records(plate_dir):
    return records_from_plate(open_plate(plate_dir))


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("model") / "model.safetensors")


@pytest.fixture(scope="module")
def reference(records, bundle_path):
    """The single-process computation: predict_proba and explain over the whole stack."""
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.io.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    raw = np.stack([read_record(r) for r in records])
    probs = bundle.predict_proba(raw)
    targets = probs.argmax(1)
    res = run_generator(explain(bundle.model, bundle.prepare(raw), targets=targets,
                                method="pcim", device="cpu", batch_size=4, **PCIM["pcim"]))
    return probs, targets, res.maps


def pcim_config(**kw):
    return BatchConfig(methods=["pcim"], params=PCIM, device="cpu", batch_size=4,
                       images_per_task=kw.pop("images_per_task", 4), **kw)


def assert_matches_reference(store, records, reference):
    probs, targets, maps = reference
    assert store.done_mask().all()
    np.testing.assert_allclose(store.probabilities(), probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.targets()[:, 0], targets)
    stored = store.maps("pcim")[:]
    assert stored.shape == maps.shape and np.isfinite(stored).all()
    np.testing.assert_allclose(stored, maps, rtol=1e-4, atol=1e-5)
    assert [r.id for r in store.records] == [r.id for r in records]


def read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_batch_equals_single_process_and_writes_tables(tmp_path, records, bundle_path,
                                                       reference):
    out = tmp_path / "result.zarr"
    events = []
    result = run_generator(run_batch(records, bundle_path, out, pcim_config(),
                                     n_workers=2, processes=False), events.append)
    assert result.n_computed == len(records) and result.n_skipped == 0
    assert events[-1].step == events[-1].total == len(records)
    store = open_result(out)
    assert store.complete
    assert_matches_reference(store, records, reference)
    meta = store.meta
    assert meta["channel_names"] == CHANNELS and meta["class_names"] == ["neg", "pos"]
    assert meta["provenance"]["bundle_sha256"] == meta["payload_summary"]["bundle_sha256"]
    # an NGFF HCS plate: wells A/1 ... B/2 with 3 fields each, maps as (c, y, x) images
    assert validate_store(out).n_wells == 4
    fields = check_plate(out)
    assert sorted(fields) == sorted(f"{w[0]}/{int(w[1:])}/{k}" for w in
                                    ("A01", "A02", "B01", "B02") for k in range(3))
    assert all(shape == [1, 32, 32] for shape in fields.values())
    ms = store.group["A/1/0"].attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert store.maps("pcim").shape[1:] == read_record(records[0]).shape[1:]

    rows = read_csv(result.table_path)
    assert [r["image_id"] for r in rows] == [r.id for r in records]
    probs = reference[0]
    for row, p in zip(rows, probs, strict=True):
        assert row["predicted"] == ["neg", "pos"][int(np.argmax(p))]
        assert float(row["p_pos"]) == pytest.approx(float(p[1]), abs=1e-5)
    wells = read_csv(result.wells_path)
    assert [w["well"] for w in wells] == ["A01", "A02", "B01", "B02"]
    assert all(int(w["n_images"]) == 3 for w in wells)
    a01 = [i for i, r in enumerate(records) if r.well == "A01"]
    assert float(wells[0]["mean_p_pos"]) == pytest.approx(float(probs[a01, 1].mean()),
                                                          abs=1e-5)

    # Rerunning the finished run computes nothing and starts no cluster.
    again = run_generator(run_batch(records, bundle_path, out, pcim_config(),
                                    n_workers=2, processes=False))
    assert again.n_computed == 0 and again.n_skipped == len(records)
    assert again.n_workers == 0


def test_per_channel_maps_and_channel_shares(tmp_path, records, bundle_path):
    cfg = BatchConfig(methods=["saliency"], per_channel=True, device="cpu", batch_size=6)
    result = run_generator(run_batch(records, bundle_path, tmp_path / "pc.zarr", cfg,
                                     n_workers=1, processes=False))
    store = result.open()
    maps = store.maps("saliency")[:]
    assert maps.shape == (len(records), 2, 32, 32) and np.isfinite(maps).all()
    shares = store.channel_share()[:, 0]
    mass = np.abs(maps).reshape(len(records), 2, -1).sum(-1)
    np.testing.assert_allclose(shares, mass / mass.sum(1, keepdims=True), rtol=1e-4)
    rows = read_csv(result.table_path)
    assert float(rows[0]["saliency_share_dna"]) == pytest.approx(float(shares[0, 0]), 1e-4)
    omero = store.group["A/1/0"].attrs["omero"]["channels"]
    assert [c["label"] for c in omero] == ["saliency dna", "saliency gfp"]
    # per-channel maps are channels of each field image: valid NGFF (one channel axis)
    assert all(shape == [2, 32, 32] for shape in check_plate(tmp_path / "pc.zarr").values())
    validate_store(tmp_path / "pc.zarr")


def test_interrupt_and_resume(tmp_path, records, bundle_path, reference):
    out = tmp_path / "resume.zarr"
    seen = []

    def stop() -> bool:
        return sum(len(e.partial.get("computed", [])) for e in seen) >= 2

    with pytest.raises(Cancelled):
        run_generator(run_batch(records, bundle_path, out, pcim_config(images_per_task=1),
                                n_workers=2, processes=False), seen.append, stop)
    store = BatchStore.open(out, mode="r+")
    done_before = store.done_mask()
    assert 2 <= done_before.sum() < len(records) and not store.complete
    # A crash mid-image leaves outputs without the done mark: they must be recomputed.
    victim = int(np.flatnonzero(~done_before)[0])
    store.maps("pcim")[victim] = np.full((32, 32), -7.0, np.float32)
    assert not store.done_mask([victim])[0]

    result = run_generator(run_batch(records, bundle_path, out, pcim_config(),
                                     n_workers=2, processes=False))
    assert result.n_skipped == int(done_before.sum())
    assert result.n_computed == len(records) - int(done_before.sum())
    store = open_result(out)
    assert store.complete
    assert_matches_reference(store, records, reference)


def test_killed_worker_run_completes_without_loss(tmp_path, records, bundle_path, reference):
    from distributed import Client, LocalCluster

    out = tmp_path / "killed.zarr"
    killed = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:

        def kill_busy_worker(event) -> None:
            if killed or not event.partial.get("computed"):
                return
            busy = [a for a, keys in client.processing().items() if keys]
            if busy:
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(busy[0])

        seen = []

        def watch(event) -> None:
            seen.append(event)
            kill_busy_worker(event)

        result = run_generator(run_batch(records, bundle_path, out,
                                         pcim_config(images_per_task=1), client=client),
                               watch)
    assert killed, "no worker was busy when the first images finished"
    # the death is reported, not silently absorbed: in the progress and the store's log
    lost = [w for e in seen for w in e.partial.get("workers_lost", [])]
    # the killed worker is named once (on a loaded machine the scheduler may also drop a
    # worker that missed its heartbeats: that one is reported too, never absorbed)
    assert killed[0] in lost and len(set(lost)) == len(lost)
    assert any("died" in e.message for e in seen)
    assert open_result(out).meta["summary"]["workers_lost"] == lost
    assert result.n_computed == len(records)
    store = open_result(out)
    assert store.complete
    assert_matches_reference(store, records, reference)
    rows = read_csv(result.table_path)
    ids = [r["image_id"] for r in rows]
    assert sorted(ids) == sorted(r.id for r in records) and len(set(ids)) == len(ids)


def test_other_run_in_store_is_refused_unless_overwrite(tmp_path, records, bundle_path):
    out = tmp_path / "mixed.zarr"
    cfg = BatchConfig(device="cpu", batch_size=12)
    run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1, processes=False))
    first = open_result(out).meta["fingerprint"]
    with pytest.raises(InputError, match="different run.*methods/parameters"):
        run_generator(run_batch(records, bundle_path, out, pcim_config(), n_workers=1,
                                processes=False))
    other_model = make_bundle(tmp_path / "other.safetensors", seed=1)
    with pytest.raises(InputError, match="different run.*model bundle"):
        run_generator(run_batch(records, other_model, out, cfg, n_workers=1,
                                processes=False))
    with pytest.raises(InputError, match="different run.*image list"):
        run_generator(run_batch(records[:-1], bundle_path, out, cfg, n_workers=1,
                                processes=False))
    assert open_result(out).meta["fingerprint"] == first  # refused runs changed nothing
    result = run_generator(run_batch(records, other_model, out, cfg, n_workers=1,
                                     processes=False, overwrite=True))
    assert result.n_computed == len(records)
    assert open_result(out).meta["fingerprint"] != first


def test_bad_inputs_give_clear_errors(tmp_path, plate_dir, records, bundle_path):
    cfg = BatchConfig(device="cpu")
    # a missing image file
    gone = write_plate(tmp_path / "gone", wells=("A01", "A02"), sites=(1,))
    recs = records_from_plate(open_plate(gone))
    (gone / "A02_s1_gfp.tif").unlink()
    with pytest.raises(InputError, match="missing.*A02_s1_gfp"):
        run_generator(run_batch(recs, bundle_path, tmp_path / "a.zarr", cfg))
    # an unreadable bundle
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model" * 10)
    with pytest.raises(BundleError, match="not a readable"):
        run_generator(run_batch(records, bad, tmp_path / "b.zarr", cfg))
    with pytest.raises(BundleError, match="not found"):
        run_generator(run_batch(records, tmp_path / "nope.safetensors", tmp_path / "b.zarr",
                                cfg))
    # a model with another channel count
    one_channel = make_bundle(tmp_path / "one.safetensors", n_channels=1)
    with pytest.raises(InputError, match="channels"):
        run_generator(run_batch(records, one_channel, tmp_path / "c.zarr", cfg))
    # the output path holds something else: never deleted, even with overwrite
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(InputError, match="not a napari-attribution batch store"):
        run_generator(run_batch(records, bundle_path, other, cfg, overwrite=True))
    assert (other / "keep.txt").read_text() == "precious"
    # unknown method, parameters for a method not run, no images
    with pytest.raises(InputError, match="unknown attribution method"):
        run_generator(run_batch(records, bundle_path, tmp_path / "d.zarr",
                                BatchConfig(methods=["nope"])))
    with pytest.raises(InputError, match="not run"):
        run_generator(run_batch(records, bundle_path, tmp_path / "d.zarr",
                                BatchConfig(params={"pcim": {"steps": 2}})))
    with pytest.raises(InputError, match="no images"):
        run_generator(run_batch([], bundle_path, tmp_path / "d.zarr", cfg))
    with pytest.raises(InputError, match="not found"):
        open_result(tmp_path / "missing.zarr")
    for name in ("a.zarr", "b.zarr", "c.zarr", "d.zarr"):
        assert not (tmp_path / name).exists()  # nothing written before the checks pass


def test_explain_plate_api_equals_run_batch(tmp_path, plate_dir, records, bundle_path,
                                            reference):
    import napari_attribution as na

    result = na.explain_plate(open_plate(plate_dir), bundle_path, tmp_path / "api.zarr",
                              params=PCIM, device="cpu", batch_size=4, images_per_task=4,
                              n_workers=1, processes=False)
    assert result.n_computed == len(records)
    assert_matches_reference(open_result(tmp_path / "api.zarr"), records, reference)


def test_downsampled_run_matches_downsampled_images_and_aligns_in_napari(
        tmp_path, records, bundle_path):
    """A model trained on 2x downsampled crops sees 2x downsampled fields; its maps are
    placed over the full-resolution plate in napari."""
    from napari_attribution.batch.napari_reader import read_batch_store
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.io.bundle import load_bundle
    from napari_attribution.io.plate import block_mean

    out = tmp_path / "half.zarr"
    run_generator(run_batch(records, bundle_path, out, pcim_config(downsample=2),
                            n_workers=1, processes=False))
    bundle = load_bundle(bundle_path)
    raw = np.stack([block_mean(read_record(r), 2) for r in records])
    probs = bundle.predict_proba(raw)
    ref = run_generator(explain(bundle.model, bundle.prepare(raw), targets=probs.argmax(1),
                                method="pcim", device="cpu", batch_size=4, **PCIM["pcim"]))
    store = open_result(out)
    assert_matches_reference(store, records, (probs, probs.argmax(1), ref.maps))
    assert store.maps("pcim").shape[1:] == (16, 16)  # 32 px fields, halved
    assert store.meta["downsample"] == 2
    ms = store.group["A/1/0"].attrs["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    check_plate(out)
    validate_store(out)
    layers = {kw["name"]: (data, kw) for data, kw, _ in read_batch_store(str(out))}
    plate_layer, pcim_layer = layers["plate dna"], layers["pcim"]
    assert plate_layer[0].shape == (len(records), 32, 32)
    assert pcim_layer[0].shape == (len(records), 16, 16)
    assert pcim_layer[1]["scale"] == (1.0, 2.0, 2.0)  # lies over the 32 px images
    # the same store with another factor is another run: refused, nothing mixed
    with pytest.raises(InputError, match="different"):
        run_generator(run_batch(records, bundle_path, out, pcim_config(downsample=4),
                                n_workers=1, processes=False))
    with pytest.raises(InputError, match="downsample"):
        pcim_config(downsample=0).method_params()
    with pytest.raises(InputError, match="smaller than the downsampling factor 64"):
        run_generator(run_batch(records, bundle_path, tmp_path / "tiny.zarr",
                                pcim_config(downsample=64), n_workers=1, processes=False))
    assert not (tmp_path / "tiny.zarr").exists()
    # a bundle that records its training crops' factor gets it by default
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import save_bundle

    torch.manual_seed(0)
    recorded = save_bundle(tmp_path / "recorded.safetensors",
                           DCMIXClassifier(ModelConfig(2, 2, width=8)).eval(), CHANNELS,
                           ["neg", "pos"], PercentileNormalizer(mode="per_image"),
                           provenance={"data": {"downsample": 2, "crop_size": 16}})
    run_generator(run_batch(records[:2], recorded, tmp_path / "auto.zarr",
                            BatchConfig(device="cpu"), n_workers=1, processes=False))
    auto = open_result(tmp_path / "auto.zarr")
    assert auto.meta["downsample"] == 2 and auto.meta["image_shape"] == [16, 16]


def test_second_run_on_a_busy_store_is_refused_and_does_no_work(tmp_path, records,
                                                                bundle_path):
    from napari_attribution.batch.lock import StoreBusy, StoreLock, lock_path

    out = tmp_path / "busy.zarr"
    cfg = BatchConfig(device="cpu", batch_size=4, images_per_task=1)
    first = run_batch(records, bundle_path, out, cfg, n_workers=1, processes=False)
    next(first)  # the first run holds the store from here on
    assert lock_path(out).is_file()
    with pytest.raises(StoreBusy, match=r"in use by another run \(pid \d+ on .*--overwrite"):
        run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1,
                                processes=False))
    with pytest.raises(StoreBusy):  # overwrite cannot delete a store under a running run
        run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1,
                                processes=False, overwrite=True))
    result = run_generator(first)  # the first run is unharmed and finishes
    assert result.n_computed == len(records)
    StoreLock(out).acquire().release()  # the finished run let go of the store
    again = run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1,
                                    processes=False))
    assert again.n_computed == 0 and again.n_skipped == len(records)
    with StoreLock(out):  # a lock held by any process (here: this one) refuses
        with pytest.raises(StoreBusy):
            StoreLock(out).acquire()
    StoreLock(out).acquire().release()  # released on exit


def test_the_lock_is_keyed_on_the_resolved_store(tmp_path, records, bundle_path):
    """A symlink to a store (or a path with '..') is the same store: one lock."""
    from napari_attribution.batch.lock import StoreBusy, StoreLock, lock_path

    out = tmp_path / "real.zarr"
    link = tmp_path / "link.zarr"
    link.symlink_to(out, target_is_directory=True)  # dangling until the store exists
    (tmp_path / "sub").mkdir()
    dotted = tmp_path / "sub" / ".." / "real.zarr"
    assert lock_path(link) == lock_path(out) == lock_path(dotted)
    cfg = BatchConfig(device="cpu", batch_size=4, images_per_task=1)
    first = run_batch(records, bundle_path, out, cfg, n_workers=1, processes=False)
    next(first)  # holds the store
    for other in (link, dotted):
        with pytest.raises(StoreBusy, match="in use by another run"):
            run_generator(run_batch(records, bundle_path, other, cfg, n_workers=1,
                                    processes=False))
    result = run_generator(first)
    assert result.n_computed == len(records)
    again = run_generator(run_batch(records, bundle_path, link, cfg, n_workers=1,
                                    processes=False))  # through the link: same store
    assert again.n_computed == 0 and again.n_skipped == len(records)
    assert link.is_symlink() and out.is_dir() and not link.with_name("link.zarr.lock").exists()
    with StoreLock(link), pytest.raises(StoreBusy):
        StoreLock(out).acquire()


def test_a_store_left_half_created_is_restarted_a_foreign_folder_is_not(
        tmp_path, records, bundle_path, monkeypatch):
    import errno

    from napari_attribution.batch import store as store_mod
    from napari_attribution.core.runtime.errors import OutputError

    out = tmp_path / "full.zarr"
    cfg = BatchConfig(methods=["saliency"], device="cpu", batch_size=4)
    clone = store_mod._clone_field
    calls = []

    def disk_full(*args, **kwargs):  # the disk fills up after the third field
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return clone(*args, **kwargs)

    monkeypatch.setattr(store_mod, "_clone_field", disk_full)
    with pytest.raises(OutputError, match=r"cannot create the result store .*full.zarr: the "
                                          r"disk is full \(\[Errno 28\]\).*afresh"):
        run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1,
                                processes=False))
    assert (out / store_mod.CREATING).is_file() and BatchStore.is_half_created(out)
    assert not BatchStore.is_store(out)
    monkeypatch.setattr(store_mod, "_clone_field", clone)
    result = run_generator(run_batch(records, bundle_path, out, cfg, n_workers=1,
                                     processes=False))  # the same command again
    assert result.n_computed == len(records) and not (out / store_mod.CREATING).exists()
    validate_store(out)
    # what zarr leaves before the marker (an empty group) is restarted too ...
    empty = tmp_path / "empty.zarr"
    zarr = pytest.importorskip("zarr")
    zarr.open_group(str(empty), mode="w", zarr_format=2)
    assert BatchStore.is_half_created(empty)
    # ... but a folder the tool did not make is never deleted
    for name, content in (("notes.txt", "mine"), (".zattrs", '{"owner": "someone"}')):
        foreign = tmp_path / f"foreign_{name}.zarr"
        foreign.mkdir()
        (foreign / ".zgroup").write_text('{"zarr_format": 2}')
        (foreign / name).write_text(content)
        assert not BatchStore.is_half_created(foreign)
        with pytest.raises(InputError, match="is not a napari-attribution batch store"):
            run_generator(run_batch(records, bundle_path, foreign, cfg, n_workers=1,
                                    processes=False))
        assert (foreign / name).read_text() == content


def test_local_cluster_workers_do_not_profile():
    """Our LocalCluster has no dashboard: its workers must not sample stacks (memory)."""
    from napari_attribution.batch.cluster import open_client

    client, release = open_client(n_workers=1, processes=False, device="cpu")
    try:
        profiling = client.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks)
    finally:
        release()
    assert list(profiling.values()) == [False]


def test_plan_warns_about_black_box_pcims_coarse_grid_on_whole_fields(tmp_path, records,
                                                                     bundle_path):
    from dataclasses import replace

    from napari_attribution.batch.runner import plan_warnings

    cfg = BatchConfig(methods=["pcim_blackbox", "saliency"])
    (msg,) = plan_warnings(cfg, cfg.methods, (640, 800), regions=False)
    assert msg.startswith("black-box PCIM's 16 x 20 logits span 40 px each on these 640x800")
    assert plan_warnings(replace(cfg, input_size=48), cfg.methods, (640, 800), False) == []
    (region,) = plan_warnings(cfg, cfg.methods, (20000, 20000), regions=True)
    assert "1024x1024 images" in region            # what explain sees: one region
    assert plan_warnings(BatchConfig(methods=["pcim_blackbox"],
                                     params={"pcim_blackbox": {"cell": 8}}),
                         ["pcim_blackbox"], (640, 800), False) == []
    # a run on small images: nothing to warn about, and the store says so
    run = BatchConfig(methods=["pcim_blackbox"], params={"pcim_blackbox": {"samples": 4}},
                      device="cpu", batch_size=6)
    result = run_generator(run_batch(records, bundle_path, tmp_path / "bb.zarr", run,
                                     n_workers=1, processes=False))
    # the test bundle records no training size: said once, nothing about the grid
    assert [w.split(":")[0] for w in result.warnings] == ["field-scale"]
    assert result.open().meta["provenance"]["warnings"] == result.warnings


def test_crop_trained_bundle_is_run_in_tiles_of_its_training_size(tmp_path, records):
    """A bundle trained on 16 px crops (recorded ``input_size``) sees the 32 px fields in
    16 px tiles: its probabilities are the mean over the four tiles, never one global
    pass, and the store records the tile size."""
    import torch

    from napari_attribution.core.channels.dcmix import DCMIXClassifier, ModelConfig
    from napari_attribution.core.data.normalization import PercentileNormalizer
    from napari_attribution.io.bundle import load_bundle, save_bundle

    torch.manual_seed(1)
    path = save_bundle(tmp_path / "crops.safetensors",
                       DCMIXClassifier(ModelConfig(2, 2, width=8)).eval(), CHANNELS,
                       ["neg", "pos"], PercentileNormalizer(mode="per_image"),
                       provenance={"data": {"image_size": [16, 16], "input_size": 16}})
    out = tmp_path / "tiles.zarr"
    result = run_generator(run_batch(records[:3], path, out,
                                     BatchConfig(methods=["saliency"], device="cpu"),
                                     n_workers=1, processes=False))
    assert [w for w in result.warnings if w.startswith("field-scale")] == []
    store = open_result(out)
    assert store.meta["provenance"]["input_size"] == 16
    bundle = load_bundle(path)
    raw = np.stack([read_record(r) for r in records[:3]])
    x = bundle.prepare(raw)
    tiles = [x[:, :, y:y + 16, xx:xx + 16] for y in (0, 16) for xx in (0, 16)]
    with torch.no_grad():
        want = np.mean([torch.softmax(bundle.model(torch.from_numpy(t)), 1).numpy()
                        for t in tiles], 0)
    np.testing.assert_allclose(store.probabilities(), want, rtol=1e-4, atol=1e-5)
    whole = bundle.predict_proba(raw)
    assert np.abs(whole - want).max() > 1e-4     # one global pass would differ


def test_evidence_check_in_a_batch_run(tmp_path, records, bundle_path):
    """``evidence=True``: every image computed gets a state, and the findings count them."""
    run = BatchConfig(methods=["saliency"], device="cpu", batch_size=6, evidence=True)
    result = run_generator(run_batch(records[:6], bundle_path, tmp_path / "ev.zarr", run,
                                     n_workers=1, processes=False))
    assert sorted(result.evidence) == list(range(6))
    assert set(result.evidence.values()) <= {"localised", "none", "undetermined"}
    n_flagged = sum(s != "localised" for s in result.evidence.values())
    counted = sum(len(f.evidence["images"]) for f in result.findings)
    assert counted == n_flagged
    assert {f.code for f in result.findings} <= {"evidence-none", "evidence-undetermined"}
    # the same states as the check run on the same images in one process
    from napari_attribution.core.attribution.explain import explain
    from napari_attribution.io.models import load_model

    clf = load_model(bundle_path)
    raw = np.stack([read_record(r) for r in records[:6]])
    ref = run_generator(explain(clf.model, clf.prepare(raw), method="saliency",
                                device="cpu", evidence=True))
    assert [result.evidence[i] for i in range(6)] == ref.evidence["state"]
    plain = run_generator(run_batch(records[:2], bundle_path, tmp_path / "plain.zarr",
                                    BatchConfig(methods=["saliency"], device="cpu"),
                                    n_workers=1, processes=False))
    assert plain.evidence == {} and plain.findings == []


def test_plan_is_resolved_once_and_runs_as_run_batch(tmp_path, plate_dir, records,
                                                     bundle_path, reference):
    from napari_attribution.batch import BatchPlan, ClusterOptions, run_plan

    plan = BatchPlan.build(records, bundle_path, tmp_path / "plan.zarr", pcim_config(),
                           table=tmp_path / "t.csv")
    # resolved before any image is read: downsampling, tile size, validated methods
    assert plan.config.downsample == 1 and plan.config.input_size is None
    assert plan.methods == PCIM and plan.shape == (32, 32)
    spec = plan.task_spec()
    assert (spec.methods, spec.batch_size, spec.image_shape, spec.store_path) == (
        PCIM, 4, (32, 32), str((tmp_path / "plan.zarr").resolve()))
    result = run_generator(run_plan(plan, ClusterOptions(n_workers=1, processes=False)))
    assert result.table_path == tmp_path / "t.csv" and result.n_computed == len(records)
    assert_matches_reference(result.open(), records, reference)


def test_unknown_cluster_and_api_options_are_named(tmp_path, plate_dir, bundle_path):
    import napari_attribution as na
    from napari_attribution.batch import ClusterOptions

    with pytest.raises(InputError, match="'n_worker'"):
        ClusterOptions.build(None, {"n_worker": 2})
    assert ClusterOptions.build(ClusterOptions(n_workers=2), {"processes": False}) == \
        ClusterOptions(n_workers=2, processes=False)
    with pytest.raises(InputError, match="'worker'"):
        run_generator(run_batch([], bundle_path, tmp_path / "x.zarr", worker=1))
    with pytest.raises(InputError, match="'batchsize'"):
        na.explain_plate(open_plate(plate_dir), bundle_path, tmp_path / "y.zarr",
                         batchsize=3)
    assert not (tmp_path / "y.zarr").exists()

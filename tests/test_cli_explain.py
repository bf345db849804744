"""Command line: ``explain`` (bundle / TorchScript + image -> OME-TIFF) and ``evaluate``."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import tifffile
import torch

from attribution_models import small_cnn
from napari_attribution.cli import main
from napari_attribution.io.bundle import save_training_result
from napari_attribution.io.writers import read_attribution_tiff


def test_explain_bundle_writes_tiff_with_provenance(tmp_path, trained_cells, cell_data,
                                                    capsys):
    bundle = save_training_result(tmp_path / "cells.safetensors", trained_cells)
    img = tmp_path / "cell.tif"
    tifffile.imwrite(img, cell_data.images[0], photometric="minisblack")
    out = tmp_path / "map.ome.tif"
    rc = main(["explain", str(bundle), str(img), "-o", str(out), "--target", "nuclear",
               "--param", "steps=4", "--device", "cpu", "-q"])
    assert rc == 0
    maps, meta = read_attribution_tiff(out)
    assert maps.shape == (32, 32) and np.isfinite(maps).all()
    prov = meta["provenance"]
    assert prov["method"] == "pcim" and prov["params"]["steps"] == 4
    assert prov["targets"] == [1] and prov["target_names"] == ["nuclear"]
    assert prov["model_sha256"] and prov["channel_names"][1] == "Marker"
    assert "nuclear" in capsys.readouterr().out
    # Per-channel maps carry the bundle's channel names.
    out2 = tmp_path / "pc.ome.tif"
    assert main(["explain", str(bundle), str(img), "-o", str(out2), "--per-channel",
                 "-m", "saliency", "--device", "cpu", "-q"]) == 0
    maps2, meta2 = read_attribution_tiff(out2)
    assert maps2.shape == (4, 32, 32) and meta2["channel_names"][1] == "Marker"


def test_explain_torchscript_and_errors(tmp_path, capsys):
    model = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(small_cnn()), str(model))
    img = tmp_path / "x.npy"
    np.save(img, np.random.default_rng(0).normal(size=(2, 16, 16)).astype(np.float32))
    assert main(["explain", str(model), str(img), "-m", "integrated_gradients", "--trust-model",
                 "--param", "n_steps=8", "--device", "cpu", "-q"]) == 0
    maps, meta = read_attribution_tiff(tmp_path / "x.integrated_gradients.ome.tif")
    assert maps.shape == (16, 16) and meta["provenance"]["model_kind"] == "torchscript"
    assert meta["provenance"]["warnings"] == []
    # Black-box PCIM's coarse 7 x 7 grid on a larger image: a plain warning, printed and
    # kept in the file's provenance.
    field = tmp_path / "field.npy"
    np.save(field, np.random.default_rng(1).normal(size=(2, 224, 224)).astype(np.float32))
    capsys.readouterr()
    assert main(["explain", str(model), str(field), "-m", "pcim_blackbox", "--trust-model",
                 "--param", "grid=7",
                 "--param", "samples=4", "--no-evidence-check", "--device", "cpu", "-q"]) == 0
    out = capsys.readouterr().out
    assert "warning: black-box PCIM's 7 x 7 logits span 32 px each" in out
    assert "grid=14, samples=196" in out
    _, meta = read_attribution_tiff(tmp_path / "field.pcim_blackbox.ome.tif")
    assert meta["provenance"]["warnings"][0].startswith("black-box PCIM's 7 x 7 logits")
    assert main(["explain", str(model), str(img), "-t", "7", "--device", "cpu", "-q",
                 "--trust-model"]) == 1
    assert "out of range" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert main(["explain", str(bad), str(img), "--device", "cpu", "--trust-model"]) == 1
    assert "neither" in capsys.readouterr().err
    three = tmp_path / "three.npy"
    np.save(three, np.zeros((3, 16, 16), np.float32))
    assert main(["explain", str(model), str(three), "--device", "cpu", "-q",
                 "--trust-model"]) == 1
    assert "channel" in capsys.readouterr().err


def test_evaluate_table(tmp_path, trained_cells, capsys):
    bundle = save_training_result(tmp_path / "cells.safetensors", trained_cells)
    out = tmp_path / "eval.json"
    rc = main(["evaluate", str(bundle), "--sample", "cells", "-n", "6",
               "--methods", "pcim,saliency", "--metrics", "deletion,insertion,relevance_mass",
               "--format", "json", "-o", str(out), "--device", "cpu", "-q"])
    assert rc == 0
    capsys.readouterr()
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["pcim", "saliency", "image", "image_excess",
                                           "random"]
    assert [r["model_free"] for r in rows] == [False, False, True, True, True]
    assert set(rows[0]["verdicts"]) == {"deletion", "insertion"}
    assert rows[0]["ties"]["rule"] == "random"
    for r in rows[:2]:
        assert 0 <= r["deletion_auc"] <= 1 and 0 <= r["insertion_auc"] <= 1
        assert 0 <= r["relevance_mass"] <= 1 and r["ms_per_image"] > 0
        if sys.platform.startswith("linux"):  # the process's resident-set high-water mark
            assert r["peak_source"] == "process_rss" and r["peak_mib"] >= 0
    assert main(["evaluate", str(bundle), "--sample", "cells", "-n", "4", "--methods",
                 "pcim", "--metrics", "deletion", "--format", "csv", "--device", "cpu",
                 "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("method,model_free,deletion_auc,forward_per_image,backward_per_image,"
                        "ms_per_image,peak_mib,batch_size,n_images,trained_on,verdicts,"
                        "tie_breaking")
    assert lines[1].startswith("pcim,False,") and ",deletion,deletion=" in lines[1]
    assert lines[1].endswith(',"random order, seed 0"') and len([ln for ln in lines if ln]) == 5
    assert lines[2].startswith("image,True,")
    assert main(["evaluate", str(bundle), "--sample", "cells", "-n", "3", "--methods",
                 "pcim,integrated_gradients", "--metrics", "road,insertion", "--device",
                 "cpu", "-q"]) == 0
    table = capsys.readouterr().out
    assert "road_morf (lower)" in table and "road_lerf (higher)" in table
    assert "insertion (higher)" in table and "not independent evidence" in table
    assert "image_excess†" in table and "model-free baseline" in table
    assert "ties in the maps: random order, seed 0" in table
    # --sanity N: the seeds' median and worst, and a verdict; model-free maps fail
    assert main(["evaluate", str(bundle), "--sample", "cells", "-n", "3", "--methods",
                 "saliency", "--metrics", "road_morf", "--sanity", "2", "--device", "cpu",
                 "--format", "json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["sanity"]["model"]["seeds"] == [0, 1]
    assert {"sanity_worst", "sanity_abs_median", "sanity_abs_worst"} <= set(rows[0])
    assert all(r["sanity_failing"] for r in rows if r["model_free"])
    assert rows[0]["sanity"]["mode"] == "full" and "cascade" not in rows[0]["sanity"]
    # --sanity-mode cascade: rho after each layer from the top, the mixing layer last
    assert main(["evaluate", str(bundle), "--sample", "cells", "-n", "2", "--methods",
                 "saliency", "--metrics", "road_morf", "--sanity", "1", "--sanity-mode",
                 "cascade", "--device", "cpu", "-q"]) == 0
    table = capsys.readouterr().out
    assert "sanity cascade" in table and "0: trained (rerun)" in table
    steps = [ln for ln in table.splitlines() if ln[:1].isdigit() and ": " in ln[:4]]
    assert steps[1].startswith("1: + backbone.head")
    assert steps[-1].startswith(f"{len(steps) - 1}: + mixing")
    assert main(["evaluate", str(bundle), "--sample", "cells", "-n", "3", "--methods",
                 "saliency", "--metrics", "road_morf", "--no-model-free", "--device", "cpu",
                 "--format", "json", "-q"]) == 0
    assert [r["method"] for r in json.loads(capsys.readouterr().out)] == ["saliency"]
    assert main(["evaluate", str(bundle), "--sample", "cells", "--methods", "nope",
                 "--device", "cpu", "-q"]) == 1


def test_explain_shrinks_fields_like_the_training_images(tmp_path, trained_cells, cell_data):
    """A model trained on fields shrunk 2x explains a raw field shrunk 2x, and the map
    comes back on the raw pixel grid; --downsample 1 overrides."""
    import dataclasses

    from napari_attribution.core.models.inference import shrink
    from napari_attribution.core.runtime.progress import run_generator

    result = dataclasses.replace(trained_cells,
                                 data_info={**trained_cells.data_info, "downsample": 2})
    bundle = save_training_result(tmp_path / "ds2.safetensors", result)
    raw = np.repeat(np.repeat(cell_data.images[0], 2, axis=-2), 2, axis=-1)
    raw = raw[:, :-1]                       # an odd height: shrinking drops the last row
    h = raw.shape[-2]
    tifffile.imwrite(tmp_path / "field.tif", raw)
    out = tmp_path / "field.saliency.ome.tif"
    assert main(["explain", str(bundle), str(tmp_path / "field.tif"), "-m", "saliency",
                 "--device", "cpu", "-q", "-o", str(out)]) == 0
    maps, meta = read_attribution_tiff(out)
    maps = np.squeeze(maps)
    assert maps.shape == raw.shape[-2:]
    from napari_attribution.core.attribution.explain import explain_classifier
    from napari_attribution.io.models import load_model

    clf = load_model(bundle)
    want = run_generator(explain_classifier(clf, shrink(raw[None], 2), method="saliency",
                                            device="cpu")).maps[0]
    np.testing.assert_allclose(maps[:h - 1:2, ::2], want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(maps[h - 1], maps[h - 2])     # the dropped edge row
    assert meta["provenance"]["downsample"] == 2
    out1 = tmp_path / "raw.ome.tif"
    assert main(["explain", str(bundle), str(tmp_path / "field.tif"), "-m", "saliency",
                 "--device", "cpu", "-q", "-o", str(out1), "--downsample", "1"]) == 0
    raw_map = np.squeeze(read_attribution_tiff(out1)[0])
    assert raw_map.shape == raw.shape[-2:] and not np.allclose(raw_map, maps)


def test_explain_tiling_option(tmp_path, trained_cells, cell_data):
    """--tiling picks how PCIM covers a field larger than the model's input: one map on
    one scale per field by default, each tile on its own with per_tile."""
    bundle = save_training_result(tmp_path / "cells.safetensors", trained_cells)
    field = np.concatenate([np.concatenate([cell_data.images[i], cell_data.images[i + 1]],
                                           axis=-1) for i in (0, 2)], axis=-2)  # 64x64
    tifffile.imwrite(tmp_path / "field.tif", field, photometric="minisblack")
    provs = {}
    for tiling in ("auto", "per_tile"):
        out = tmp_path / f"{tiling}.ome.tif"
        assert main(["explain", str(bundle), str(tmp_path / "field.tif"), "--param",
                     "steps=3", "--device", "cpu", "-q", "-o", str(out), "--downsample", "1",
                     "--tiling", tiling, "--input-size", "32"]) == 0
        maps, meta = read_attribution_tiff(out)
        assert np.squeeze(maps).shape == (64, 64)
        provs[tiling] = meta["provenance"]["params"]
    assert provs["auto"].get("map_scale") == "field"
    assert provs["per_tile"].get("map_scale") != "field"
    with pytest.raises(SystemExit):
        main(["explain", str(bundle), str(tmp_path / "field.tif"), "--tiling", "nope"])


def test_crop_trained_bundle_explains_a_field_in_tiles_of_its_crop_size(tmp_path, trained_cells,
                                                                        cell_data, capsys):
    """A bundle trained on 32 px crops records input_size 32; explain tiles a 96 px field
    at 32 px (never one global pass); the provenance and the output say so."""
    bundle = save_training_result(tmp_path / "cells.safetensors", trained_cells)
    from napari_attribution.io.bundle import load_bundle

    assert load_bundle(bundle).provenance["data"]["input_size"] == 32
    rows = [np.concatenate(list(cell_data.images[r * 3:(r + 1) * 3]), -1) for r in range(3)]
    field = np.concatenate(rows, -2)
    np.save(tmp_path / "field.npy", field)
    out = tmp_path / "field.ome.tif"
    assert main(["explain", str(bundle), str(tmp_path / "field.npy"), "-m", "saliency",
                 "--device", "cpu", "-q", "-o", str(out)]) == 0
    maps, meta = read_attribution_tiff(out)
    prov = meta["provenance"]
    assert np.squeeze(maps).shape == (96, 96)
    assert prov["params"]["input_size"] == 32 and prov["params"]["tiling"] == "per_tile"
    assert prov["input_size"] == 32
    assert "field-scale" not in capsys.readouterr().out
    # swapped channels: the channel-map caution is printed and kept in the provenance
    np.save(tmp_path / "swapped.npy", field[[1, 0, 2, 3]])
    out2 = tmp_path / "swapped.ome.tif"
    assert main(["explain", str(bundle), str(tmp_path / "swapped.npy"), "-m", "saliency",
                 "--device", "cpu", "-q", "-o", str(out2)]) == 0
    assert "channel-map-suspect" in capsys.readouterr().out
    codes = [f["code"] for f in read_attribution_tiff(out2)[1]["provenance"]["findings"]]
    assert "channel-map-suspect" in codes


def test_output_piped_into_head_ends_quietly():
    """``napari-attribution methods | head -1``: no 'Broken pipe' error, exit 0."""
    import subprocess
    import sys

    proc = subprocess.run(
        f"{sys.executable} -m napari_attribution.cli methods --all-settings | head -1",
        shell=True, capture_output=True, text=True, timeout=120)
    assert proc.stdout.startswith("pcim:") and "Broken pipe" not in proc.stderr, proc.stderr

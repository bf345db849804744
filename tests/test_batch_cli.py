"""``napari-attribution batch`` and the napari reader for its result store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")
pytest.importorskip("zarr")

from napari_attribution.cli import main  # noqa: E402
from napari_attribution.core.runtime.errors import InputError  # noqa: E402
from test_batch import PATTERN, make_bundle, write_plate  # noqa: E402


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One finished CLI run with per-channel PCIM maps (threads, fast)."""
    pytest.importorskip("ome_zarr_models", reason="ome-zarr-models (batch extra) not installed")
    root = tmp_path_factory.mktemp("cli")
    plate = write_plate(root / "plate", wells=("A01", "B01"), sites=(1, 2))
    (root / "map.csv").write_text("well,class,dose,control\nA01,neg,0,-1\nB01,pos,5,1\n")
    bundle = make_bundle(root / "model.safetensors")
    out = root / "result.zarr"
    args = ["batch", str(plate), "--model", str(bundle), "-o", str(out), "--pattern",
            PATTERN, "--channels", "dna,gfp", "--plate-map", str(root / "map.csv"),
            "--method", "pcim", "--param", "pcim:steps=3", "--per-channel",
            "--workers", "2", "--threads", "--device", "cpu", "-q"]
    assert main(args) == 0
    return root, args, out


def test_cli_runs_resumes_and_refuses_other_runs(cli_run, capsys):
    root, args, out = cli_run
    rows = (root / "result.csv").read_text().splitlines()
    assert rows[0].startswith("index,image_id,well,site,predicted")
    assert "pcim_share_dna" in rows[0] and len(rows) == 5
    wells = (root / "result_wells.csv").read_text().splitlines()
    assert [w.split(",")[0] for w in wells[1:]] == ["A01", "B01"]
    capsys.readouterr()
    assert main(args) == 0  # same command again: nothing to compute
    assert "0 computed, 4 already done" in capsys.readouterr().out
    changed = [a if a != "pcim:steps=3" else "pcim:steps=5" for a in args]
    assert main(changed) == 1
    err = capsys.readouterr().err
    assert "different run" in err and "--overwrite" in err


def test_cli_argument_errors(tmp_path, capsys):
    bundle = make_bundle(tmp_path / "m.safetensors")
    plate = write_plate(tmp_path / "p", wells=("A01",), sites=(1,))
    base = ["batch", str(plate), "--model", str(bundle), "-o", str(tmp_path / "o.zarr")]
    assert main(base) == 2
    assert "--pattern" in capsys.readouterr().err
    assert main([*base, "--pattern", PATTERN, "--param", "steps=3"]) == 2
    assert "no --method" in capsys.readouterr().err
    assert main([*base, "--pattern", PATTERN, "--method", "pcim", "--param",
                 "saliency:steps=3"]) == 2
    assert "not run" in capsys.readouterr().err
    assert main([*base, "--pattern", PATTERN, "--channels", "gfp,dna"]) == 1
    assert "model's order" in capsys.readouterr().err
    assert not (tmp_path / "o.zarr").exists()


def test_napari_reader_gives_aligned_layers(cli_run):
    from napari_attribution.batch.napari_reader import get_reader

    root, _, out = cli_run
    assert get_reader(str(root / "result.csv")) is None
    assert get_reader(str(root / "plate")) is None
    reader = get_reader(str(out))
    assert reader is not None
    layers = reader(str(out))
    names = [kw["name"] for _, kw, _ in layers]
    assert names == ["plate dna", "plate gfp", "pcim dna", "pcim gfp"]
    shapes = {np.asarray(data).shape for data, _, _ in layers}
    assert shapes == {(4, 32, 32)}  # maps and images in register, image axis first
    data, kw, kind = layers[2]
    assert kind == "image" and kw["metadata"]["attribution"]["method"] == "pcim"
    assert kw["metadata"]["image_ids"] == ["A01_s1", "A01_s2", "B01_s1", "B01_s2"]
    from napari_attribution.batch import open_result
    from napari_attribution.batch.records import read_record

    store = open_result(out)
    np.testing.assert_array_equal(np.asarray(data), store.maps("pcim")[:, 0])
    np.testing.assert_array_equal(np.asarray(layers[1][0][2]),
                                  read_record(store.records[2])[1])
    assert store.records[0].info == {"label": "neg", "dose": 0.0, "control": -1}


def test_reader_is_in_the_manifest():
    import npe2

    import napari_attribution

    manifest = npe2.PluginManifest.from_file(
        Path(napari_attribution.__file__).with_name("napari.yaml"))
    readers = {r.command: r for r in manifest.contributions.readers}
    entry = readers["napari-attribution.get_batch_reader"]
    assert entry.accepts_directories and "*.zarr" in entry.filename_patterns


def test_param_parsing():
    from napari_attribution.cli.cmd_batch import parse_channels, parse_method_params

    assert parse_method_params(["steps=3", "pcim:lr=0.5"], ["pcim", "rise"]) == {
        "pcim": {"steps": 3, "lr": 0.5}, "rise": {"steps": 3}}
    assert parse_channels("GFP=1,DNA=2") == {"GFP": "1", "DNA": "2"}
    assert parse_channels("dna,gfp") == ["dna", "gfp"]
    with pytest.raises(InputError):
        parse_channels("GFP=1,DNA")


def test_train_on_a_plate_folder(tmp_path, capsys):
    from napari_attribution.io.bundle import load_bundle

    plate = write_plate(tmp_path / "plate", wells=("A01", "A02", "B01", "B02"), sites=(1, 2))
    (tmp_path / "map.csv").write_text(
        "well,class,dose,control\nA01,neg,0,-1\nA02,neg,0,-1\nB01,pos,5,1\nB02,pos,5,1\n")
    base = ["train", "--plate", str(plate), "--pattern", PATTERN, "--channels", "dna,gfp",
            "--crops", "grid", "--crop-size", "16", "--downsample", "1", "--per-image", "4",
            "--epochs", "2", "--device", "cpu", "-q", "--cv", "1",
            "-o", str(tmp_path / "m.safetensors")]
    assert main(base) == 2  # no plate map: no labels
    assert "--plate-map" in capsys.readouterr().err
    assert main([*base, "--plate-map", str(tmp_path / "map.csv")]) == 0
    out = capsys.readouterr().out
    assert "sampling grid crops (16 px)" in out and "balanced accuracy" in out
    # split by well: no split warning (the shortcut check may flag gfp, the phenotype)
    assert "held out by well" in out and "not by well" not in out
    assert "class and well coincide" not in out
    bundle = load_bundle(tmp_path / "m.safetensors")
    assert bundle.channel_names == ["dna", "gfp"] and bundle.class_names == ["neg", "pos"]
    # the validation split holds whole wells: 2 fields x 4 tiles per well
    prov = bundle.provenance
    assert prov["n_validation"] == 8 * len(prov["validation_groups"]) > 0
    assert prov["n_train"] + prov["n_validation"] == 32
    data_info = dict(prov["data"])
    assert data_info.pop("input_normalization")["mode"] == "per_field"
    assert set(data_info.pop("channel_reference")["channels"]) == {"dna", "gfp"}
    sampling = data_info.pop("sampling")  # what was used: 4 tiles per field, all kept
    assert (sampling["objects_used"], sampling["objects_found"], sampling["fields_used"],
            sampling["wells_used"], sampling["per_image"]) == (32, 32, 8, 4, 4)
    assert data_info == {"image_size": [16, 16], "input_size": 16, "n_images": 32,
                         "source": str(plate),
                         "crops": "grid", "crop_size": 16, "downsample": 1,
                         "geometry": "given", "segmentation": "otsu", "split_by": "well"}
    assert bundle.normalizer.mode == "per_field"
    assert not any("not by well" in w or "coincide" in w for w in prov["warnings"])

"""Atomic, honest writes: nothing under the final name unless complete, one clear line
on failure, existing outputs refused unless --overwrite (tests run as root, so failures
are simulated by making the write or the rename raise, not by chmod)."""

import errno
import os

import numpy as np
import pytest

from napari_attribution.cli import main
from napari_attribution.core.runtime.errors import OutputError
from napari_attribution.io.atomic import TMP_PREFIX, atomic_write_text
from napari_attribution.io.bundle import save_training_result
from napari_attribution.io.figures import save_overlay_figure
from napari_attribution.io.writers import (
    read_attribution_tiff,
    write_attribution_tiff,
    write_importance_csv,
)


def _litter(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(TMP_PREFIX)
            or p.name.endswith(".partial")]


def _fail_rename(monkeypatch, code):
    def boom(src, dst):
        raise OSError(code, os.strerror(code), str(dst))
    monkeypatch.setattr(os, "replace", boom)
    monkeypatch.setattr(os, "link", boom)


def test_text_written_atomically_with_usual_permissions(tmp_path):
    out = atomic_write_text(tmp_path / "a.txt", "hello")
    assert out.read_text() == "hello" and not _litter(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("code, why", [(errno.ENOSPC, "disk is full"),
                                       (errno.EROFS, "read-only")])
def test_failed_rename_leaves_nothing(tmp_path, monkeypatch, code, why):
    _fail_rename(monkeypatch, code)
    with pytest.raises(OutputError, match=why) as info:
        write_attribution_tiff(tmp_path / "m.ome.tif", np.ones((8, 8), np.float32))
    assert str(tmp_path / "m.ome.tif") in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_mid_write_leaves_nothing(tmp_path, monkeypatch):
    import tifffile

    def half_then_full(path, *a, **k):
        with open(path, "wb") as f:
            f.write(b"II*\0" + b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", half_then_full)
    with pytest.raises(OutputError, match="disk is full"):
        write_attribution_tiff(tmp_path / "m.ome.tif", np.ones((8, 8), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_every_writer_refuses_existing_unless_overwrite(tmp_path, trained_cells):
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    cases = [
        (tmp_path / "m.ome.tif", lambda p, o: write_attribution_tiff(p, maps, overwrite=o)),
        (tmp_path / "i.csv", lambda p, o: write_importance_csv(p, {"a": 1.0}, overwrite=o)),
        (tmp_path / "b.safetensors", lambda p, o: save_training_result(p, trained_cells,
                                                                       overwrite=o)),
        (tmp_path / "f.png", lambda p, o: save_overlay_figure(
            p, np.ones((1, 2, 8, 8)), np.ones((1, 8, 8)), overwrite=o)),
    ]
    for path, write in cases:
        write(path, False)
        before = path.read_bytes()
        with pytest.raises(OutputError, match="already exists"):
            write(path, False)
        assert path.read_bytes() == before
        write(path, True)
    assert not _litter(tmp_path)
    arr, meta = read_attribution_tiff(tmp_path / "m.ome.tif")
    np.testing.assert_array_equal(arr, maps)


@pytest.mark.parametrize("target", ["/dev/null", "folder"])
def test_device_or_folder_is_not_an_output(tmp_path, target):
    path = tmp_path if target == "folder" else target
    with pytest.raises(OutputError, match="folder|device"):
        write_attribution_tiff(path, np.ones((8, 8), np.float32))
    assert not os.path.exists("/dev/null.ome.tif")


@pytest.fixture()
def bundle(tmp_path, trained_cells):
    return save_training_result(tmp_path / "cells.safetensors", trained_cells)


def test_cli_refuses_existing_output_then_overwrites(tmp_path, bundle, capsys):
    out = tmp_path / "imp.csv"
    assert main(["channels", str(bundle), "--format", "csv", "-o", str(out)]) == 0
    out.write_text("mine")
    capsys.readouterr()
    assert main(["channels", str(bundle), "--format", "csv", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert out.read_text() == "mine"
    assert main(["channels", str(bundle), "--format", "csv", "-o", str(out),
                 "--overwrite"]) == 0
    assert out.read_text().startswith("channel,")


def test_train_refuses_existing_bundle_before_training(tmp_path, bundle, capsys):
    import time

    before = bundle.read_bytes()
    t0 = time.perf_counter()
    assert main(["train", "--sample", "cells", "--epochs", "5", "--device", "cpu", "-q",
                 "-o", str(bundle)]) == 1
    assert time.perf_counter() - t0 < 5  # refused up front, not after five epochs
    assert "already exists" in capsys.readouterr().err
    assert bundle.read_bytes() == before


def _small_npz(folder):
    from napari_attribution.core.data.synthetic import make_cell_phenotype

    data = make_cell_phenotype(n_images=48, size=24, seed=0)
    path = folder / "small.npz"
    np.savez(path, images=data.images, labels=data.labels,
             channel_names=np.array(data.channel_names))
    return path


@pytest.mark.parametrize("command", ["channels", "explain", "train"])
def test_cli_full_disk_is_one_line_and_no_file(tmp_path, bundle, capsys, monkeypatch,
                                               command):
    img = tmp_path / "cell.npy"
    np.save(img, np.random.default_rng(0).random((4, 48, 48)).astype(np.float32))
    out = tmp_path / "out" / "result.ome.tif"
    args = {"channels": ["channels", str(bundle), "-o", str(out)],
            "explain": ["explain", str(bundle), str(img), "-m", "saliency", "-q",
                        "--device", "cpu", "-o", str(out)],
            "train": ["train", "--npz", str(_small_npz(tmp_path)), "--epochs", "1",
                      "--device", "cpu", "-q", "-o", str(out.with_suffix(".safetensors"))]
            }[command]
    _fail_rename(monkeypatch, errno.ENOSPC)
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write") and "disk is full" in err
    assert err.count("\n") == 0
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_cli_output_device_and_directory(tmp_path, bundle, capsys):
    img = tmp_path / "cell.npy"
    np.save(img, np.random.default_rng(0).random((4, 48, 48)).astype(np.float32))
    assert main(["explain", str(bundle), str(img), "-m", "saliency", "-q", "--device",
                 "cpu", "-o", "/dev/null"]) == 1
    assert "device" in capsys.readouterr().err
    assert not os.path.exists("/dev/null.ome.tif")
    assert main(["channels", str(bundle), "-o", str(tmp_path)]) == 1
    assert "folder" in capsys.readouterr().err
    # a folder given to explain is where the maps go
    assert main(["explain", str(bundle), str(img), "-m", "saliency", "-q", "--device",
                 "cpu", "-o", str(tmp_path)]) == 0
    assert (tmp_path / "cell.saliency.ome.tif").is_file()


@pytest.mark.parametrize("args, msg", [
    (["train", "--sample", "cells", "--lr", "-1"], "--lr"),
    (["train", "--sample", "cells", "--epochs", "0"], "--epochs"),
    (["train", "--sample", "cells", "--val-fraction", "1.5"], "--val-fraction"),
    (["train", "--sample", "cells", "--lr", "nan"], "--lr"),
    (["explain", "m.safetensors", "x.npy", "--batch-size", "abc"], "--batch-size"),
])
def test_cli_ranges(args, msg, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert msg in capsys.readouterr().err


def test_cli_typed_method_params(tmp_path, bundle, capsys):
    img = tmp_path / "cell.npy"
    np.save(img, np.random.default_rng(0).random((4, 48, 48)).astype(np.float32))
    assert main(["explain", str(bundle), str(img), "--param", "steps=abc", "-q"]) == 1
    err = capsys.readouterr().err
    assert "steps='abc' must be a whole number" in err and "Traceback" not in err
    assert main(["explain", str(bundle), str(img), "-m", "saliency", "--param",
                 "n_steps=3", "-q"]) == 1
    assert "unknown saliency parameter" in capsys.readouterr().err


def test_batch_store_on_a_read_only_disk_is_one_clear_error(tmp_path, monkeypatch):
    from napari_attribution.batch import lock

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), args[0])

    monkeypatch.setattr(lock.os, "open", read_only)
    with pytest.raises(OutputError, match=r"cannot write the result store .*read-only"):
        lock.StoreLock(tmp_path / "plate.zarr").acquire()


def test_cli_turns_a_stray_oserror_into_one_line(monkeypatch, capsys):
    from napari_attribution import cli

    def boom(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.zarr/0/0")

    parser = cli.build_parser()
    args = parser.parse_args(["channels", "m.safetensors"])
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    args.func = boom
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: args)
    assert cli.main([]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "error: /data/x.zarr/0/0: No space left on device ([Errno 28])"


@pytest.mark.parametrize("suffix", [".pt2", ".zip"])
def test_export_model_on_a_full_disk_is_one_line_not_an_abort(tmp_path, bundle, suffix):
    """torch's zip writer ends its archive in a C++ destructor: a write failing there
    aborted the process (SIGABRT). A real write failure (the file size limit, EFBIG, as a
    disk filling up gives ENOSPC) must be one line, exit 2, and leave nothing behind."""
    import importlib.util
    import resource
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import napari_attribution

    if suffix == ".zip" and importlib.util.find_spec("bioimageio") is None:
        pytest.skip("bioimage.io export needs bioimageio.spec (not installed)")
    out = tmp_path / "out"
    out.mkdir()

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = {**os.environ, "PYTHONPATH": str(Path(napari_attribution.__file__).parents[1]),
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "napari_attribution.cli", "export-model",
                           str(bundle), "-o", str(out / f"model{suffix}")],
                          preexec_fn=small_files, capture_output=True, text=True, env=env,
                          timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 1, err[-2000:]
    assert err.count("\n") == 0 and err.startswith("error: cannot write")
    assert "file size limit" in err and "Traceback" not in err
    assert list(out.iterdir()) == []

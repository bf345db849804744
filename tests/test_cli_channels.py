"""Command line: train, channels and demo smoke runs."""

import json

import numpy as np
import pytest

from napari_attribution.cli import main


def test_train_then_channels_in_every_format(tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    rc = main(["train", "--sample", "cells", "--epochs", "1", "--device", "cpu", "-q",
               "-o", str(out)])
    assert rc == 0 and out.exists()
    assert "bundle written" in capsys.readouterr().out
    assert main(["channels", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Marker" in text and "channels the model needs" in text
    assert "study verdict:" in text and "held out:" in text
    assert main(["channels", str(out), "--format", "json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert {r["channel"] for r in js["channels"]} == {"DNA", "Marker", "Membrane",
                                                       "Distractor"}
    assert abs(sum(r["importance"] for r in js["channels"]) - 1) < 1e-6
    csv_path = tmp_path / "imp.csv"
    assert main(["channels", str(out), "--format", "csv", "-o", str(csv_path)]) == 0
    assert csv_path.read_text().splitlines()[0].startswith("channel,importance")


def test_train_from_npz(tmp_path, cell_data):
    npz = tmp_path / "data.npz"
    sub = cell_data.subset(np.arange(64))
    np.savez(npz, images=sub.images, labels=sub.labels,
             channel_names=np.array(sub.channel_names))
    out = tmp_path / "m.safetensors"
    assert main(["train", "--npz", str(npz), "--epochs", "1", "--device", "cpu", "-q",
                 "-o", str(out)]) == 0


@pytest.mark.parametrize(
    ("argv", "message", "code", "prefix"),
    [
        (["channels", "missing.safetensors"], "not found", 1, "error:"),
        (["train", "--epochs", "1"], "exactly one of", 2, "usage error:"),
        (["train", "--sample", "cells", "--device", "quantum", "-q"], "unknown device", 1,
         "error:"),
    ],
)
def test_cli_errors_are_one_line_messages(tmp_path, capsys, argv, message, code, prefix,
                                          monkeypatch):
    """A failed run exits 1, a wrong command line 2 (as argparse's own errors)."""
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith(prefix) and message in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_exit_codes_tell_a_failed_run_from_a_wrong_command_line(tmp_path, capsys):
    assert main(["explain", "model.safetensors", str(tmp_path / "missing.tif")]) == 1
    with pytest.raises(SystemExit) as bad_flag:
        main(["explain", "--no-such-flag"])
    assert bad_flag.value.code == 2


def test_demo_without_viewer(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--device", "cpu", "--no-viewer",
                 "-o", str(tmp_path)]) == 0
    assert (tmp_path / "demo_model.safetensors").exists()
    rows = (tmp_path / "channel_importance.csv").read_text().splitlines()
    assert len(rows) == 5
    from napari_attribution.io.bundle import file_sha256
    from napari_attribution.io.writers import read_attribution_tiff

    maps, meta = read_attribution_tiff(tmp_path / "pcim_maps.ome.tif")
    assert maps.ndim == 3 and maps.shape[1:] == (48, 48) and np.isfinite(maps).all()
    prov = meta["provenance"]
    assert prov["method"] == "pcim"
    assert prov["model_sha256"] == file_sha256(tmp_path / "demo_model.safetensors")
    assert (tmp_path / "pcim_overlay.png").stat().st_size > 10_000
    assert "of the positive attribution lies in the true region" in capsys.readouterr().out


def test_every_option_of_every_command_has_help_text():
    import argparse

    from napari_attribution.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, sp in sub.choices.items() for a in sp._actions
               if not isinstance(a, argparse._HelpAction)
               and (not a.help or a.help == argparse.SUPPRESS)]
    assert missing == []

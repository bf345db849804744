"""Fuzz cases for the readers (TIFF/OME headers), plate maps and bundle metadata.

Shared by ``tests/test_fuzz_io.py`` (a few hundred cases in the suite) and
``benchmarks/fuzz_io.py`` (thousands, with the counts reported in docs/benchmarks.md).
Every case ends in one of two outcomes, counted in :data:`COUNTS`:

* ``clear_error``: an :class:`~napari_attribution.core.runtime.errors.AttributionError` with a
  message (the reader refused the file);
* ``correct``: a read whose result matches what was written.

Anything else fails the case: another exception (a raw traceback for the user) or a
read that succeeds with different pixels, wells or metadata (a silent-wrong read).
"""

from __future__ import annotations

import copy
import io
import json
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from napari_attribution.core.runtime.errors import AttributionError

COUNTS: Counter = Counter()

# ----------------------------------------------------------------------------- TIFF / OME

LAYOUTS = {"YX": 2, "CYX": 3, "ZCYX": 4, "TCYX": 4, "YXS": 3}
DTYPES = ["uint8", "uint16", "int16", "float32"]
MUTATIONS = ["none", "truncate", "ome_size", "physical_size", "header_byte", "extra_page",
             "description", "ifd_byte"]
BAD_SIZES = ["0", "-1", "nan", "inf", "-inf", "abc", "", "1e308", "0.325", "1e-9"]


@st.composite
def tiff_cases(draw):
    layout = draw(st.sampled_from(sorted(LAYOUTS)))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    sizes = {"Y": h, "X": w, "C": draw(st.integers(1, 4)), "Z": draw(st.integers(1, 3)),
             "T": draw(st.integers(1, 3)), "S": 3}
    shape = tuple(sizes[a] for a in layout)
    dtype = "uint8" if layout == "YXS" else draw(st.sampled_from(DTYPES))
    return {
        "layout": layout, "shape": shape, "dtype": dtype,
        "ome": draw(st.booleans()),
        "compression": draw(st.sampled_from([None, "zlib"])),
        "seed": draw(st.integers(0, 2**16)),
        "mutation": draw(st.sampled_from(MUTATIONS)),
        "cut": draw(st.floats(0.0, 0.999)),
        "attr": draw(st.sampled_from(["SizeC", "SizeZ", "SizeT", "SizeX", "SizeY"])),
        "value": draw(st.sampled_from(["0", "1", "2", "3", "7", "100", "-1", "x", ""])),
        "size_value": draw(st.sampled_from(BAD_SIZES)),
        "byte_pos": draw(st.integers(0, 15)),
        "byte": draw(st.integers(0, 255)),
        "text": draw(st.text(max_size=60)),
    }


def _write_tiff(path: Path, case: dict) -> np.ndarray:
    import tifffile

    rng = np.random.default_rng(case["seed"])
    info = np.iinfo(case["dtype"]) if case["dtype"] != "float32" else None
    if info is None:
        arr = rng.standard_normal(case["shape"]).astype(np.float32)
    else:
        arr = rng.integers(max(info.min, -1000), min(info.max, 4000), case["shape"],
                           endpoint=True).astype(case["dtype"])
    kw = {"compression": case["compression"]}
    if case["layout"] == "YXS":
        kw["photometric"] = "rgb"
    else:
        kw["photometric"] = "minisblack"
    if case["ome"]:
        axes = "YXS" if case["layout"] == "YXS" else case["layout"]
        meta = {"axes": axes, "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tifffile.imwrite(path, arr, ome=True, metadata=meta, **kw)
    else:
        tifffile.imwrite(path, arr, **kw)
    return arr


def _mutate(path: Path, case: dict) -> str:
    """Apply the case's mutation; returns what kind of change was really made."""
    import tifffile

    m = case["mutation"]
    blob = path.read_bytes()
    if m == "truncate":
        path.write_bytes(blob[:int(len(blob) * case["cut"])])
        return m
    if m == "header_byte":
        b = bytearray(blob)
        b[case["byte_pos"]] = case["byte"]
        path.write_bytes(bytes(b))
        return m if bytes(b) != blob else "none"
    if m == "ifd_byte":
        with tifffile.TiffFile(path) as tif:
            start = tif.pages.first.offset
        b = bytearray(blob)
        pos = min(len(b) - 1, start + 2 + case["byte_pos"] * 3)
        b[pos] = case["byte"]
        path.write_bytes(bytes(b))
        return m if bytes(b) != blob else "none"
    if m in ("ome_size", "physical_size", "description", "extra_page"):
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata if tif.is_ome else None
            pages = [p.asarray() for p in tif.pages]
            photometric = tif.pages.first.photometric
            first = tif.pages.first.description
        if m == "extra_page":  # a page of another shape after the image's pages
            pages.append(np.zeros((max(1, case["shape"][0] // 2 + 3), 5), pages[0].dtype))
            new = first
        elif m == "description":
            new = case["text"]
        elif xml is None:
            return "none"
        elif m == "ome_size":
            new = re.sub(rf'\b{case["attr"]}="[^"]*"', f'{case["attr"]}="{case["value"]}"',
                         xml, count=1)
        else:
            new = xml.replace('PhysicalSizeX="0.5"', f'PhysicalSizeX="{case["size_value"]}"')
        if new == xml:
            return "none"
        with tifffile.TiffWriter(path) as tw:
            for i, page in enumerate(pages):
                tw.write(page, photometric=photometric if page.ndim == pages[0].ndim
                         else "minisblack", metadata=None,
                         description=new.encode() if i == 0 and new else None)
        return m
    return "none"


def run_tiff_case(case: dict, folder: Path) -> str:
    """Write, mutate and read one TIFF; returns the outcome, raises on a bad one."""
    from napari_attribution.io.readers import read_image

    path = folder / ("case.ome.tif" if case["ome"] else "case.tif")
    path.unlink(missing_ok=True)
    arr = _write_tiff(path, case)
    kind = _mutate(path, case)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = read_image(path)
    except AttributionError as err:
        assert str(err), "an error without a message"
        if kind == "none":  # an intact file must read
            raise AssertionError(f"intact file refused: {err}") from None
        return _count("tiff", "clear_error")
    except Exception as err:  # a raw traceback for the user
        raise AssertionError(f"raw {type(err).__name__} on {kind}: {err}") from err
    got = np.asarray(img.raw)
    if got.size != arr.size or not np.array_equal(got.ravel(), arr.ravel()):
        raise AssertionError(f"silent-wrong read after {kind}: read shape {got.shape} "
                             f"({img.raw_axes}), wrote {arr.shape}")
    if img.pixel_size is not None:
        assert all(np.isfinite(v) and v > 0 for v in img.pixel_size), img.pixel_size
    return _count("tiff", "correct")


def _count(kind: str, outcome: str) -> str:
    COUNTS[(kind, outcome)] += 1
    return outcome


# ----------------------------------------------------------------------------- plate maps

WELL_VALUES = ["A01", "a1", "B2", "H12", "P24", "A-3", "C_04", " D5 ", "A0", "AA01", "Z99",
               "1A", "", "A", "A01A", "é1", "A001"]
GOOD_WELLS = [f"{r}{c:02d}" if (i % 2) else f"{r.lower()}{c}"
              for i, (r, c) in enumerate((r, c) for r in "ABCDEFGH" for c in range(1, 13))]
NUMBERS = ["", "0", "1", "-1", "2.5", "nan", "inf", "-inf", "1e400", "x", " 3 ", "0x10"]


@st.composite
def plate_map_cases(draw):
    columns = draw(st.lists(st.sampled_from(["well", "class", "dose", "control", "row",
                                             "col", "note"]), min_size=0, max_size=5,
                            unique=True))
    if draw(st.integers(0, 4)) and "well" not in columns:  # mostly a usable map
        columns.insert(0, "well")
    n = draw(st.integers(0, 6))
    rows = []
    for _ in range(n):
        row = {}
        for c in columns:
            if c == "well":
                row[c] = draw(st.sampled_from(WELL_VALUES) if draw(st.integers(0, 3)) == 0
                              else st.sampled_from(GOOD_WELLS))
            elif c == "control":
                row[c] = draw(st.sampled_from(NUMBERS))
            elif c in ("dose", "col"):
                row[c] = draw(st.sampled_from(NUMBERS))
            elif c == "row":
                row[c] = draw(st.sampled_from(["A", "b", "", "Q", "7"]))
            else:
                row[c] = draw(st.text(alphabet=st.characters(blacklist_categories=["Cs"]),
                                      max_size=8))
        rows.append(row)
    delimiter = draw(st.sampled_from([",", ",", ";", "\t"]))
    return {"columns": columns, "rows": rows, "garbage": draw(st.binary(max_size=40)),
            "use_garbage": draw(st.integers(0, 9)) == 0,
            "row_col": draw(st.integers(0, 3)) == 0, "delimiter": delimiter,
            "decimal_comma": delimiter != "," and draw(st.booleans())}


def run_plate_map_case(case: dict, folder: Path) -> str:
    import csv

    from napari_attribution.io.plate import normalise_well, read_plate_map

    path = folder / "map.csv"
    if case["use_garbage"]:
        path.write_bytes(case["garbage"])
    else:
        buf = io.StringIO()
        delimiter = case.get("delimiter", ",")
        writer = csv.DictWriter(buf, fieldnames=case["columns"], delimiter=delimiter)
        writer.writeheader()
        for r in case["rows"]:  # ';'-separated files from many locales: "2,5" for 2.5
            writer.writerow({k: v.replace(".", ",") if case.get("decimal_comma") and
                             k in ("dose", "control") else v for k, v in r.items()})
        path.write_text(buf.getvalue(), encoding="utf-8")
    kw = {"row_column": "row", "col_column": "col"} if case["row_col"] else {}
    try:
        pm = read_plate_map(path, **kw)
    except AttributionError as err:
        assert str(err)
        return _count("plate_map", "clear_error")
    except Exception as err:
        raise AssertionError(f"raw {type(err).__name__}: {err}") from err
    if case["use_garbage"]:
        return _count("plate_map", "correct")  # nothing to compare a garbage read with
    # every row is one well, with its class, dose and control as written
    assert len(pm.wells) == len(case["rows"]), "rows lost or merged"
    for r in case["rows"]:
        well = normalise_well(r["row"], r["col"]) if case["row_col"] \
            else normalise_well(r["well"])
        info = pm.wells[well]
        label = (r.get("class") or "").strip() or None
        assert info.label == label, (info, r)
        if (r.get("dose") or "").strip():
            assert info.dose == float(r["dose"]) or np.isnan(float(r["dose"]))
        if (r.get("control") or "").strip():
            assert info.control == int(float(r["control"]))
    return _count("plate_map", "correct")


# ----------------------------------------------------------------------------- bundles

META_KEYS = ["format", "format_version", "config", "channel_names", "class_names",
             "normalization", "provenance", "importance", "validation", "study_design",
             "shortcut_check", "posthoc_importance", "importance_repeats", "retrain_check"]
CONFIG_KEYS = ["n_channels", "n_classes", "n_heads", "width"]
ODD_VALUES = [None, 0, -1, 1.5, "x", "", [], {}, [1, 2], ["a"], {"a": 1}, True, 10**9,
              float("nan")]


@st.composite
def bundle_cases(draw):
    edits = draw(st.lists(st.tuples(st.sampled_from(META_KEYS), st.sampled_from(
        ["delete", "replace", "nested", "deep", "config"]),
        st.sampled_from(range(len(ODD_VALUES)))), max_size=3))
    return {"edits": edits, "raw_text": draw(st.one_of(st.none(), st.text(max_size=40)))}


def run_bundle_case(case: dict, base_meta: dict, state: dict, folder: Path) -> str:
    from safetensors.torch import save

    from napari_attribution.io.bundle import load_bundle

    meta = json.loads(json.dumps(base_meta))
    for key, how, vi in case["edits"]:
        value = copy.deepcopy(ODD_VALUES[vi])  # never share (and so nest) the originals
        if how == "delete":
            meta.pop(key, None)
        elif how == "replace":
            meta[key] = value
        elif how == "config" and isinstance(meta.get("config"), dict):
            meta["config"][CONFIG_KEYS[vi % len(CONFIG_KEYS)]] = value
        elif how == "deep" and isinstance(meta.get(key), dict | list) and meta[key]:
            _deep_edit(meta[key], vi, value)  # one level further down
        elif isinstance(meta.get(key), dict) and meta[key]:
            sub = sorted(meta[key])[vi % len(meta[key])]
            meta[key][sub] = value
        elif isinstance(meta.get(key), list) and meta[key]:
            meta[key][vi % len(meta[key])] = value
    text = case["raw_text"] if case["raw_text"] is not None else json.dumps(meta)
    path = folder / "fuzz.safetensors"
    path.write_bytes(save(state, metadata={"napari_attribution": text}))
    try:
        bundle = load_bundle(path)
    except AttributionError as err:
        assert str(err)
        return _count("bundle", "clear_error")
    except Exception as err:
        raise AssertionError(f"raw {type(err).__name__}: {err}") from err
    # a bundle that loads must describe itself consistently
    n_c, n_k = len(bundle.channel_names), len(bundle.class_names)
    assert all(isinstance(c, str) for c in bundle.channel_names), bundle.channel_names
    assert all(isinstance(c, str) for c in bundle.class_names), bundle.class_names
    assert n_c == bundle.n_channels and n_k >= 2
    # and its stored importance and reports must print (what `channels` shows)
    from napari_attribution.cli.cmd_channels import (
        format_checks,
        format_importance,
        report_json,
    )

    try:
        if bundle.importance is not None:
            for fmt in ("text", "csv"):
                format_importance(bundle.importance, fmt)
        format_checks(bundle.findings, bundle.checks)
        json.dumps(report_json(bundle.importance, bundle.findings, bundle.checks))
    except Exception as err:
        raise AssertionError(f"a loaded bundle does not print: raw {type(err).__name__}: "
                             f"{err}") from err
    return _count("bundle", "correct")


def _deep_edit(node, vi: int, value) -> None:
    """Replace one value one level below ``node`` (a dict's value's item, or a list's)."""
    child = node[sorted(node)[vi % len(node)]] if isinstance(node, dict) else \
        node[vi % len(node)]
    if isinstance(child, dict) and child:
        child[sorted(child)[vi % len(child)]] = value
    elif isinstance(child, list) and child:
        child[vi % len(child)] = value

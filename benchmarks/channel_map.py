"""Channel-map sanity on BBBC013: does a GFP/DNA swap get a caution, and the right order
none? (a script, not a test)

The reference statistics come from 48 px crops at 2x (16 per control well, as training
records them); every one of the 96 fields (shrunk 2x) is then checked as given and with
its two channels swapped, and the crops in batches of 32.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/channel_map.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "bbbc013"
sys.path.insert(0, str(ROOT / "src"))

from napari_attribution.core.channels.channel_map import (  # noqa: E402
    channel_reference,
    check_channel_map,
)
from napari_attribution.core.models.inference import shrink  # noqa: E402


def main() -> None:
    if not (DATA / "1049_Metadata.csv").exists():
        print(f"skipping: {DATA} not found")
        return
    from napari_attribution.io.plate import bbbc013_plate_map, load_bbbc013, open_bbbc013

    crops = load_bbbc013(DATA, crop_size=48, downsample=2, per_image=16, seed=0)
    names = list(crops.channel_names)
    ref = channel_reference(crops.images, names)
    pm = bbbc013_plate_map(DATA)
    by_dose: dict[int, list[tuple[bool, bool]]] = {}
    for fov, px in open_bbbc013(DATA).iter_fields():
        f = shrink(px, 2)[None]
        by_dose.setdefault(int(pm.wells[fov.well].dose), []).append(
            (bool(check_channel_map(ref, f, names)),
             bool(check_channel_map(ref, f[:, ::-1], names))))
    print("| images | n | caution, channels as given | caution, GFP and DNA swapped |")
    print("|---|---|---|---|")
    for lo, hi in ((0, 4), (5, 10)):
        r = np.array([v for d, vs in by_dose.items() if lo <= d <= hi for v in vs])
        print(f"| fields, dose {lo}-{hi} | {len(r)} | {r[:, 0].sum()} | {r[:, 1].sum()} |")
    batches = range(0, len(crops), 32)
    right = sum(bool(check_channel_map(ref, crops.images[i:i + 32], names)) for i in batches)
    swap = sum(bool(check_channel_map(ref, crops.images[i:i + 32, ::-1], names))
               for i in batches)
    print(f"| crops, batches of 32 | {len(batches)} | {right} | {swap} |")


if __name__ == "__main__":
    main()

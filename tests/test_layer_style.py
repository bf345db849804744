"""How attribution maps are shown: contrast from zero for signed maps."""

import numpy as np

from napari_attribution.layer_style import heatmap_style


def test_signed_map_starts_at_zero_and_ignores_outliers():
    rng = np.random.default_rng(0)
    m = rng.normal(0, 0.3, (4, 32, 32)).astype(np.float32)
    m[:, 10:14, 10:14] = 2.0  # the evidence
    m[0, 0, 0] = 500.0  # one extreme pixel
    style = heatmap_style(m)
    lo, hi = style["contrast_limits"]
    assert lo == 0.0  # suppressed / untouched pixels add nothing over the image
    assert 1.5 < hi < 10  # the evidence is bright, the outlier does not set the scale
    assert style["colormap"] == "inferno" and style["blending"] == "additive"


def test_positive_and_degenerate_maps():
    w = np.linspace(0.5, 3.0, 1000).reshape(10, 10, 10)
    lo, hi = heatmap_style(w)["contrast_limits"]
    assert np.isclose(lo, np.percentile(w, 1)) and np.isclose(hi, np.percentile(w[w > lo],
                                                                                 99.5))
    lo, hi = heatmap_style(np.zeros((5, 5)))["contrast_limits"]
    assert hi > lo
    nan = np.full((5, 5), np.nan)
    nan[0, 0] = 1.0
    lo, hi = heatmap_style(nan)["contrast_limits"]
    assert np.isfinite([lo, hi]).all() and hi > lo


def test_files_opened_one_by_one_get_distinct_colours_from_their_channel_numbers():
    from napari_attribution.layer_style import channel_number, stain_colormaps

    assert channel_number("Channel2") == 2 and channel_number("ch0") == 0
    assert channel_number("GFP") is None and channel_number("Channel 3") == 3
    one_by_one = [stain_colormaps([n])[0] for n in ("Channel1", "Channel2")]
    assert one_by_one[0] != one_by_one[1]
    assert stain_colormaps(["DNA"]) == ["blue"] and stain_colormaps(["GFP"]) == ["green"]
    # one file with several channels: unchanged (distinct colours from the cycle)
    assert stain_colormaps(["Channel1", "Channel2"]) == ["green", "magenta"]


def test_signed_maps_get_a_symmetric_scale():
    from napari_attribution.layer_style import is_signed_map, symmetric_limits

    m = np.zeros((2, 16, 16), np.float32)
    m[0, 2:5, 2:5], m[1, 8:12, 8:12] = 1.0, -3.0
    assert is_signed_map("integrated_gradients", m)
    assert is_signed_map("pcim", m, contrast=1)          # "A rather than B"
    assert not is_signed_map("pcim", m)                  # PCIM: evidence from zero up
    assert not is_signed_map("saliency", np.abs(m))      # absolute gradients
    tiny = np.abs(m)
    tiny[0, 0, 0] = -1e-4                                # rounding, not a sign
    assert not is_signed_map("occlusion", tiny)
    lo, hi = symmetric_limits([m])
    assert lo == -hi and 1.0 < hi <= 3.0
    assert symmetric_limits([np.zeros((4, 4))]) == (-1.0, 1.0)


def test_well_and_site_for_layer_names():
    from napari_attribution.layer_style import well_field

    per_crop = {"well": ["A01", "A01", "B02"], "site": ["1", "2", "1"]}
    assert well_field(per_crop, 1) == "A01 s2" and well_field(per_crop, 2) == "B02 s1"
    assert well_field(per_crop) == ""                     # several wells: none named
    assert well_field({"well": ["C03", "C03"]}) == "C03"
    assert well_field({"image_id": "01-A-01"}) == "01-A-01"   # from the file name
    assert well_field({"well": "D04", "site": 3}) == "D04 s3"
    assert well_field({}) == ""

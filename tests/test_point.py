"""Point and explain without Qt (core/attribution/point.py): crops at the training scale,
one object's prediction and evidence, maps placed back on the field, every object of a
label image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attribution_models import SpotModel
from napari_attribution.core.attribution.point import (
    explain_labels,
    explain_objects,
    explain_point,
    inside_share,
    label_at,
    mask_fraction,
    placement,
    prepare_field,
)
from napari_attribution.core.models.classifier import Classifier
from napari_attribution.core.models.inference import ModelScale
from napari_attribution.core.runtime.errors import InputError
from napari_attribution.core.runtime.progress import run_generator

SPOT_A = (slice(10, 20), slice(10, 20))   # field pixels, block-aligned at 2x
SPOT_B = (slice(40, 50), slice(40, 50))


def _clf(downsample: int = 2, size: int = 16) -> Classifier:
    return Classifier(module=SpotModel(), kind="module", channel_names=["spot", "noise"],
                      class_names=["off", "on"],
                      provenance={"data": {"image_size": [size, size],
                                           "downsample": downsample}})


def _field(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 2x64x64 field with two bright spots in channel 0 and their labels (1, 2)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 0.3, (2, 64, 64)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    for k, sl in enumerate((SPOT_A, SPOT_B), start=1):
        x[0][sl] += 0.8
        labels[sl] = k
    return x, labels


def test_prepared_field_is_the_shrunk_field_and_crops_centre_on_the_point():
    field, _ = _field()
    prep = prepare_field(_clf(), field)
    assert (prep.factor, prep.crop, prep.shape) == (2, 16, (64, 64))
    assert prep.x.shape == (2, 32, 32)
    assert prep.x[0, 0, 0] == pytest.approx(field[0, :2, :2].mean())
    # field pixel 45 is the centre of shrunk pixel 22 (block 44-45): crop 14..29
    assert prep.origin((45, 45)) == (14, 14)
    assert prep.box((14, 14)) == (28, 28, 60, 60)
    assert prep.origin((0, 0)) == (0, 0)            # shifted inside at the edges
    assert prep.origin((63, 63)) == (16, 16)
    assert prepare_field(_clf(), field, layer_downsample=2).factor == 1
    with pytest.raises(InputError, match="smaller than its 40 px input"):
        prepare_field(_clf(size=40), field)
    with pytest.raises(Exception, match="channel"):
        prepare_field(_clf(), field[:1])


def test_placement_puts_each_map_pixel_on_its_block():
    # layer scale 0.5 µm/px, translate (10, 20); crop origin (3, 5) at 2x
    p = placement([0.5, 0.5], [10.0, 20.0], 2, (3, 5))
    assert p["scale"] == [1.0, 1.0]
    # map pixel (0, 0) averages field pixels 6-7 (y) and 10-11 (x): centre 6.5, 10.5
    assert p["translate"] == pytest.approx([10 + 6.5 * 0.5, 20 + 10.5 * 0.5])
    # leading axes pass through
    q = placement([1.0, 2.0, 2.0], [4.0, 0.0, 0.0], 3, (0, 1))
    assert q["scale"] == [1.0, 6.0, 6.0] and q["translate"] == pytest.approx([4, 2, 8])


def test_inside_share_and_mask_fraction():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 1, 1] = 3.0, 1.0, -5.0
    masks = np.zeros((2, 4, 4))
    masks[:, :2, :2] = 1.0
    share = inside_share(maps, masks)
    assert share[0] == pytest.approx(0.75) and np.isnan(share[1])
    frac = mask_fraction(np.pad(np.ones((3, 3), bool), ((0, 1), (0, 1))), 2)
    assert frac.tolist() == [[1.0, 0.5], [0.5, 0.25]]
    assert label_at(np.array([[0, 2]]), (0, 1)) == 2 and label_at(np.ones((2, 2)), (5, 0)) == 0


def test_explain_point_finds_the_clicked_spot_and_places_its_map_on_it():
    field, labels = _field()
    clf = _clf()
    prep = prepare_field(clf, field)
    res = run_generator(explain_point(clf, prep, (47.0, 41.0), labels=labels))
    assert res.labels.tolist() == [2]
    assert res.scope == "cell" and "scope_note" not in res.params   # the default
    assert res.centres[0] == pytest.approx([44.5, 44.5])      # snapped to the centroid
    assert res.class_names[int(res.probabilities[0].argmax())] == "on"
    assert res.evidence_state == ["localised"]
    # the spot channel carries the decision, the noise channel nothing
    assert res.channel_evidence[0, 0] > 0.3 and abs(res.channel_evidence[0, 1]) < 0.05
    assert res.inside[0] > 0.8
    # the map's strongest pixel, placed with ``placement``, lies on spot B in the field
    p = placement([1.0, 1.0], [0.0, 0.0], res.factor, tuple(res.origins[0]))
    iy, ix = np.unravel_index(np.argmax(res.maps[0]), res.maps[0].shape)
    wy = p["translate"][0] + iy * p["scale"][0]
    wx = p["translate"][1] + ix * p["scale"][1]
    assert labels[int(round(wy)), int(round(wx))] == 2
    rows = res.rows()
    assert rows[0]["label"] == 2 and rows[0]["predicted"] == "on"
    assert rows[0]["evidence"] == "localised" and rows[0]["channel_spot"] > 0.3
    # off any label: centred on the point itself, no mask
    free = run_generator(explain_point(clf, prep, (30.0, 30.0), labels=labels))
    assert free.labels.tolist() == [0] and np.isnan(free.inside[0])
    assert free.centres[0].tolist() == [30.0, 30.0]
    # ... and explained with the whole crop, saying why
    assert free.scope == "crop" and free.params["scope_note"] == "no object under the click"
    assert free.crop_channel_evidence is None
    bare = run_generator(explain_point(clf, prep, (45.0, 45.0), steps=2))
    assert bare.scope == "crop" and "no label image" in bare.params["scope_note"]


def test_pcim_channel_evidence_is_a_share_per_channel():
    field, labels = _field()
    clf = _clf()
    prep = prepare_field(clf, field)
    res = run_generator(explain_point(clf, prep, (15, 15), labels=labels,
                                      channel_evidence="pcim", steps=3))
    ch = res.channel_evidence[0]
    assert ch.sum() == pytest.approx(1.0, abs=1e-5) and ch[0] > ch[1]
    assert res.maps.shape == (1, 16, 16)
    with pytest.raises(InputError, match="channel evidence"):
        run_generator(explain_point(clf, prep, (15, 15), channel_evidence="votes"))


def test_explain_labels_gives_one_row_per_object_and_can_be_cancelled():
    field, labels = _field()
    clf = _clf()
    prep = prepare_field(clf, field)
    res = run_generator(explain_labels(clf, prep, labels, steps=3))
    assert res.labels.tolist() == [1, 2] and len(res.rows()) == 2
    assert res.scope == "cell"       # the default: each row's evidence is that cell's
    assert {"channel_spot", "crop_channel_spot"} <= set(res.rows()[0])
    assert all(r["predicted"] == "on" for r in res.rows())
    assert (res.inside > 0.8).all()
    prov = res.provenance()
    assert prov["objects"] == 2 and prov["channel_evidence"] == "occlusion"
    assert prov["scope"] == "cell" and "cell's pixels" in prov["channel_evidence_means"]
    assert "crop" in prov["probabilities_of"] and "crop_channel_evidence_means" in prov
    only = run_generator(explain_labels(clf, prep, labels, ids=[1], steps=3))
    assert only.labels.tolist() == [1]
    with pytest.raises(InputError, match="no objects"):
        run_generator(explain_labels(clf, prep, np.zeros_like(labels)))
    with pytest.raises(InputError, match="field of view"):
        run_generator(explain_labels(clf, prep, labels[:10]))
    gen = explain_labels(clf, prep, labels, steps=8)
    next(gen)
    gen.close()   # cancelling leaves the caller's module as it was
    assert all(p.requires_grad for p in clf.module.parameters())


def test_per_crop_models_prepare_each_crop():
    class PerCrop:
        mode = "per_crop"

    field, labels = _field()
    clf = _clf()
    clf.normalizer = PerCrop()
    seen = []
    clf.preprocess = lambda a: (seen.append(a.shape), a * 0 + 1)[1]
    prep = prepare_field(clf, field)
    assert prep.per_crop and seen == []          # the field is only shrunk
    res = run_generator(explain_objects(clf, prep, [(45, 45)], steps=3, evidence=False))
    assert seen == [(1, 2, 16, 16)] and res.evidence_state == [None]


def test_scale_from_arguments_and_default_crop():
    field, _ = _field()
    clf = Classifier(module=SpotModel(), kind="module", channel_names=["a", "b"],
                     class_names=["off", "on"])
    prep = prepare_field(clf, np.pad(field, ((0, 0), (0, 8), (0, 8))))
    assert (prep.factor, prep.crop) == (1, 64)
    prep = prepare_field(clf, field, ModelScale(4, 8))
    assert (prep.factor, prep.crop, prep.x.shape) == (4, 8, (2, 16, 16))
    with torch.no_grad():
        assert prep.x[0].max() > 0.5


def test_one_click_runs_on_one_torch_thread_and_restores_the_setting():
    from napari_attribution.core.attribution.point import torch_threads

    field, labels = _field()
    clf = _clf()
    prep = prepare_field(clf, field)
    before = torch.get_num_threads()
    seen = []
    gen = explain_point(clf, prep, (45, 45), labels=labels, steps=3)
    seen.append((next(gen), torch.get_num_threads()))
    gen.close()
    assert seen[0][1] == 1 and torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_cell_scope_keeps_the_evidence_inside_the_clicked_cell():
    from napari_attribution.core.attribution.point import Within, cell_regions

    field, labels = _field()
    field[0, 4:8, 40:44] += 0.8       # a third spot, near B's crop but outside its cell
    clf = _clf()
    prep = prepare_field(clf, field)
    crop = run_generator(explain_point(clf, prep, (45, 45), labels=labels, steps=3,
                                       scope="crop"))
    cell = run_generator(explain_point(clf, prep, (45, 45), labels=labels, steps=3))
    region = cell_regions(labels, [2], prep, cell.origins)[0] > 0
    assert region.any() and not region.all()
    assert (cell.maps[0][~region] == 0).all()
    assert cell.scope == "cell" and crop.scope == "crop"
    assert cell.inside[0] > 0.8
    # the probabilities are the crop's prediction in both scopes
    assert np.allclose(cell.probabilities, crop.probabilities, atol=1e-5)
    assert cell.channel_evidence[0, 0] > 0.3 and abs(cell.channel_evidence[0, 1]) < 0.05
    # beside the cell's own channel evidence, the whole crop's (the crop scope's numbers)
    assert crop.crop_channel_evidence is None
    assert np.allclose(cell.crop_channel_evidence, crop.channel_evidence, atol=1e-5)
    assert "crop_channel_spot" in cell.rows()[0] and "crop_channel_spot" not in crop.rows()[0]
    # the evidence check deleted inside the cell only
    assert cell.params["evidence_config"]["within"] is True
    assert "within" not in crop.params["evidence_config"]
    assert cell.evidence_state[0] in ("localised", "none", "undetermined")
    # the wrapper is the model on the crop itself
    x = torch.from_numpy(prep.x[None, :, :16, :16].copy())
    w = Within(clf.module, x, torch.ones(1, 1, 16, 16) * 0.5)
    assert torch.allclose(w(x), clf.module(x))
    table = run_generator(explain_labels(clf, prep, labels, steps=2, scope="cell"))
    assert table.labels.tolist() == [1, 2] and (table.inside > 0.8).all()
    whole = run_generator(explain_labels(clf, prep, labels, steps=2, scope="crop"))
    assert whole.scope == "crop" and whole.crop_channel_evidence is None
    assert np.allclose(whole.channel_evidence, table.crop_channel_evidence, atol=1e-5)
    assert run_generator(explain_point(clf, prep, (45, 45), labels=labels, steps=2,
                                       crop_channels=False)).crop_channel_evidence is None
    with pytest.raises(InputError, match="scope"):
        run_generator(explain_point(clf, prep, (45, 45), scope="well"))


def test_cell_regions_from_a_window_equal_growing_the_whole_field():
    from skimage.segmentation import expand_labels

    from napari_attribution.core.attribution.point import cell_regions

    rng = np.random.default_rng(3)
    lab = np.zeros((64, 64), np.int32)
    for k, (y, x) in enumerate(rng.integers(3, 60, (12, 2)), start=1):
        lab[y - 2:y + 2, x - 2:x + 2] = k
    field = np.zeros((2, 64, 64), np.float32)
    prep = prepare_field(_clf(), field)
    ids = np.unique(lab)[1:]
    origins = np.array([prep.origin(np.argwhere(lab == i).mean(0)) for i in ids])
    whole = expand_labels(lab, 5.0)
    want = np.stack([mask_fraction(whole[y * 2:(y + 16) * 2, x * 2:(x + 16) * 2] == i, 2)
                     for i, (y, x) in zip(ids, origins, strict=True)])
    assert np.array_equal(cell_regions(lab, ids, prep, origins, grow=5.0), want)


def test_point_options_split_keywords_and_check_them():
    """One options object for a click and the table: keywords naming a field replace it,
    the others are PCIM settings (checked by PCIM); bad values are refused at once."""
    from napari_attribution.core.attribution.point import PointOptions

    base = PointOptions(steps=2, pcim={"lr": 0.3})
    opts = PointOptions.build(base, threads=1, evidence=False, tol=0.01)
    assert (opts.steps, opts.threads, opts.evidence) == (2, 1, False)
    assert opts.pcim == {"lr": 0.3, "tol": 0.01} and base.pcim == {"lr": 0.3}
    assert PointOptions.build(None, pcim={"lr": 0.1}, lr=0.2).pcim == {"lr": 0.2}
    with pytest.raises(InputError, match="unknown channel evidence 'votes'"):
        PointOptions.build(channel_evidence="votes")
    with pytest.raises(InputError, match="at least one PCIM step"):
        PointOptions(steps=0)


def test_evidence_check_within_a_region_deletes_only_there():
    """The cell scope's evidence check: fractions of the region's pixels, the map's top
    pixels inside it against null deletions in the same region."""
    from napari_attribution.core.attribution.evidence import (
        EvidenceConfig,
        deletion_masks,
    )

    cfg = EvidenceConfig(fractions=(0.1, 0.5), n_random=3)
    m = np.zeros((2, 8, 8), np.float32)
    m[0, 2, 2], m[0, 7, 7] = 1.0, 5.0          # the map's peak lies outside the region
    region = np.zeros((2, 8, 8), bool)
    region[0, 1:5, 1:5] = True                  # 16 pixels
    masks = deletion_masks(m, cfg, within=region)
    assert masks.shape == (2, 4, 2, 64)
    inside = region[0].ravel()
    assert not masks[0][..., ~inside].any()     # nothing deleted outside the region
    assert masks[0, :, 0].sum(-1).tolist() == [2] * 4     # 10 % of 16, rounded
    assert masks[0, :, 1].sum(-1).tolist() == [8] * 4
    assert masks[0, 0, 0, 2 * 8 + 2]            # the top pixel of the region first
    assert masks[1, :, 0].sum(-1).tolist() == [6] * 4     # an empty region: the image


def test_within_nulls_keep_the_size_and_the_moved_one_the_shape():
    """Null deletions inside a cell: random pixels, random discs, or the map's own top
    mask moved elsewhere in the cell (shape kept, clipped pixels replaced by nearby
    ones); always as many pixels as the top mask, never outside the cell."""
    from scipy import ndimage as ndi

    from napari_attribution.core.attribution.evidence import (
        EvidenceConfig,
        deletion_masks,
    )

    m = np.zeros((1, 24, 24), np.float32)
    m[0, 10:14, 10:14] = 1.0                    # a compact 4 x 4 top
    scattered = np.random.default_rng(1).random((1, 24, 24)).astype(np.float32)
    region = np.zeros((1, 24, 24), bool)
    region[0, 4:20, 4:20] = True                # 256 pixels
    inside = region[0].ravel()
    for null in ("pixels", "blobs", "moved"):
        cfg = EvidenceConfig(fractions=(16 / 256, 0.3), n_random=5, within_null=null)
        masks = deletion_masks(m, cfg, within=region)
        assert not masks[0][..., ~inside].any()
        assert masks[0, :, 0].sum(-1).tolist() == [16] * 6
        assert masks[0, :, 1].sum(-1).tolist() == [77] * 6
        blobs = [ndi.label(masks[0, r, 0].reshape(24, 24))[1] for r in range(1, 6)]
        if null == "pixels":
            assert max(blobs) > 3               # scattered
        else:
            assert blobs == [1] * 5             # one compact piece each
        if null == "moved":
            # the 4 x 4 square moved whole unless it hit the cell's edge
            boxes = [np.ptp(np.nonzero(masks[0, r, 0].reshape(24, 24)), axis=1).tolist()
                     for r in range(1, 6)]
            assert [3, 3] in boxes
            # a scattered top mask stays scattered
            sc = deletion_masks(scattered, cfg, within=region)
            assert min(ndi.label(sc[0, r, 0].reshape(24, 24))[1] for r in range(1, 6)) > 3
        # an empty region counts as the whole image, for every null
        whole = deletion_masks(m, cfg, within=np.zeros_like(region))
        assert whole[0, :, 0].sum(-1).tolist() == [36] * 6   # 16/256 of 576 pixels
    with pytest.raises(InputError, match="within_null"):
        EvidenceConfig(within_null="rings")


def test_segment_field_takes_the_nuclear_stain_channel_sized_to_the_model():
    from napari_attribution.core.attribution.point import segment_field

    field, lab = _field()
    field[1][lab > 0] += 0.8            # nuclei in the second channel
    seg = segment_field(field, ["GFP", "Hoechst 33342"], ModelScale(2, 16))
    assert (seg.channel, seg.channel_name, seg.named) == (1, "Hoechst 33342", True)
    assert seg.diameter == 16.0 and seg.objects == 2 and seg.seconds >= 0
    assert seg.labels.shape == (64, 64) and (seg.labels[lab == 1] == seg.labels[15, 15]).all()
    assert seg.method == "built-in Otsu + watershed on Hoechst 33342"
    # no stain name: the last channel, said to be a guess; a shrunk layer: smaller nuclei
    other = segment_field(field, ["spot", "noise"], ModelScale(2, 16), layer_downsample=2)
    assert (other.channel, other.named, other.diameter) == (1, False, None)
    # the first channel when it is the one named so
    assert segment_field(field[::-1], ["DAPI", "GFP"], ModelScale(2, 16)).channel == 0
    with pytest.raises(InputError, match="one plane per channel"):
        segment_field(field, ["GFP"])


def test_occlusion_log_odds_rank_channels_where_the_probability_saturates():
    """A model whose target logit is 40 x channel 0's mean: P(target) stays 1.0 with the
    channel replaced, so the probability drop is 0 for both channels, while the log-odds
    drop is the logit's change for channel 0 and 0 for channel 1 (same passes)."""
    from napari_attribution.core.attribution.point import channel_occlusion, occlusion_drops

    class Saturated(torch.nn.Module):
        def forward(self, x):
            a = 40 * x[:, 0].mean(dim=(1, 2)) + 40 * x[:, 0, :4, :4].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(a), a], 1)

    x = np.zeros((2, 2, 8, 8), np.float32)
    x[:, 0, :4, :4] = 1.0     # channel 0 bright in one corner: its mean is 0.25
    x[:, 1] = np.random.default_rng(0).random((2, 8, 8))
    targets = np.array([1, 1])
    p, lo = occlusion_drops(Saturated(), x, targets)
    np.testing.assert_allclose(p, 0.0, atol=1e-6)           # saturated: P stays 1
    np.testing.assert_allclose(channel_occlusion(Saturated(), x, targets), p)
    # logit 40 * 0.25 + 40 * 1 = 50 -> 40 * 0.25 + 40 * 0.25 = 20: 30 nats for channel 0
    np.testing.assert_allclose(lo[:, 0], 30.0, rtol=1e-4)
    np.testing.assert_allclose(lo[:, 1], 0.0, atol=1e-5)
    # three classes: the log-odds of the target against the log-sum-exp of the others
    class Three(torch.nn.Module):
        def forward(self, x):
            m = x[:, 0, :4, :4].mean(dim=(1, 2))
            return torch.stack([torch.zeros_like(m), torch.zeros_like(m), 8 * m], 1)

    p3, lo3 = occlusion_drops(Three(), x, np.array([2, 2]))
    # corner mean 1 -> 0.25: log-odds 8 - log 2 -> 2 - log 2, a drop of 6 nats
    np.testing.assert_allclose(lo3[:, 0], 6.0, rtol=1e-4)
    np.testing.assert_allclose(lo3[:, 1], 0.0, atol=1e-5)
    soft = np.exp([8.0, 2.0]) / (np.exp([8.0, 2.0]) + 2)
    np.testing.assert_allclose(p3[:, 0], soft[0] - soft[1], rtol=1e-4)


def test_object_rows_carry_the_log_odds_drops():
    field, labels = _field()
    clf = _clf()
    prep = prepare_field(clf, field)
    cell = run_generator(explain_labels(clf, prep, labels, steps=2, scope="cell"))
    assert cell.channel_log_odds.shape == (2, 2)
    row = cell.rows()[0]
    assert row["log_odds_spot"] == pytest.approx(float(cell.channel_log_odds[0, 0]), abs=1e-5)
    assert cell.channel_log_odds[:, 0].min() > 0.5            # the spot channel decides
    assert np.abs(cell.channel_log_odds[:, 1]).max() < 0.2    # the noise channel does not
    assert "log_odds_means" in cell.provenance()
    pcim = run_generator(explain_labels(clf, prep, labels, steps=2, scope="cell",
                                        channel_evidence="pcim"))
    assert pcim.channel_log_odds is None and "log_odds_spot" not in pcim.rows()[0]

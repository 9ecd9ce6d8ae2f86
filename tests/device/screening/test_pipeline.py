"""Pass 2 of the screening on a real photo with the shipped engines."""
import numpy as np
import pytest

from device.screening.pipeline import ScreeningPipeline
from models.runtime import preprocess
from models.runtime.images import read_rgb


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pass_2_averages_the_disc_and_cup_with_the_mirrored_crop(refuge_photo, precision):
    rgb = read_rgb(refuge_photo)
    pipeline = ScreeningPipeline.from_artifacts(precision=precision, threads=1, disc_classifier=True)
    assert pipeline.mirror
    found, _ = pipeline.locate_disc(rgb)
    assert found is not None
    seg = pipeline.segment_disc(rgb, *found)

    # on ONNX Runtime pass 2 sees the middle of the 256 px disc crop, at the scale training showed the disc
    assert pipeline.sizes == preprocess.SMALL_PASSES
    size = pipeline.sizes.crop
    view = preprocess.warp(rgb, preprocess.disc_crop_box(*found, rgb.shape))
    margin = (preprocess.INPUT_SIZE - size) // 2
    x = preprocess.normalize(view[margin:margin + size, margin:margin + size])
    assert seg.disc_prob.shape == (size, size)
    assert seg.scale == pytest.approx(seg.box.side / size)
    plain = pipeline.engine.run({"image": x})
    mirrored = pipeline.engine.run({"image": np.ascontiguousarray(x[..., ::-1])})
    for name, got in (("disc", seg.disc_prob), ("cup", seg.cup_prob)):
        expected = (plain[name][0, 0] + mirrored[name][0, 0, :, ::-1]) / 2
        assert np.abs(got - expected).max() < 1e-4, name
        assert np.abs(got - plain[name][0, 0]).max() > 1e-3, name  # the mirrored pass did change the map
    # the glaucoma opinion stays the one the referral fusion was fitted on: the crop as taken
    assert seg.glaucoma_logit == pytest.approx(float(plain["glaucoma"].reshape(-1)[0]), abs=1e-4)
    # the disc classifier reads the whole 256 px crop it was trained on, from the same resampling
    whole_crop = pipeline.classifier.run({"image": preprocess.normalize(view)})["glaucoma"]
    assert seg.disc_classifier_logit == pytest.approx(float(whole_crop.reshape(-1)[0]), abs=1e-4)

    unmirrored = ScreeningPipeline(pipeline.engine, pipeline.policy, mirror=False).segment_disc(rgb, *found)
    assert np.abs(unmirrored.disc_prob - plain["disc"][0, 0]).max() < 1e-4


def test_the_disc_classifier_runs_only_where_the_referral_rule_averages_its_score(refuge_photo, monkeypatch):
    """The shipped rule decides on the vCDR alone: the classifier is not loaded and the screening is the
    same as with it, but for its unused score. A rule that averages it gets it without asking."""
    import dataclasses

    from device.screening.referral import DISC_CLASSIFIER, ReferralPolicy

    rgb = read_rgb(refuge_photo)
    shipped = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    assert DISC_CLASSIFIER not in shipped.policy.fused_opinions()
    assert shipped.classifier is None and shipped.not_run == {"glaucoma"} and len(shipped.engines()) == 1
    asked = ScreeningPipeline.from_artifacts(precision="fp32", threads=1, disc_classifier=True)
    assert asked.classifier is not None and asked.not_run == set()
    without, with_it = shipped.screen(rgb).to_dict(), asked.screen(rgb).to_dict()
    assert without["disc_classifier_probability"] is None and with_it["disc_classifier_probability"] is not None
    for key in ("referral", "vcdr", "glaucoma_probability", "gradable"):
        assert without[key] == with_it[key], key

    averaging = dataclasses.replace(shipped.policy, opinions=["vcdr", DISC_CLASSIFIER])
    monkeypatch.setattr(ReferralPolicy, "load", classmethod(lambda cls, path: averaging))
    fused = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    assert fused.classifier is not None and fused.not_run == set()
    assert fused.screen(rgb).to_dict()["disc_classifier_probability"] == with_it["disc_classifier_probability"]


@pytest.mark.parametrize("moved_to", [0.2, 1.6])
def test_a_fovea_where_anatomy_does_not_put_one_is_dropped(refuge_photo, moved_to):
    """On a REFUGE photo the fovea is found about 2.5 disc diameters from the disc; the same heatmap
    peak moved next to the disc, or well beyond where a fovea lies, is refused rather than drawn and
    used for the rims."""
    from device.screening.pipeline import FOVEA_DISC_DIAMETERS

    rgb = read_rgb(refuge_photo)
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    (cx, cy, diameter), fovea = pipeline.locate_disc(rgb)
    assert fovea is not None
    apart = np.hypot(fovea[0] - cx, fovea[1] - cy) / diameter
    assert FOVEA_DISC_DIAMETERS[0] <= apart <= FOVEA_DISC_DIAMETERS[1]
    assert not FOVEA_DISC_DIAMETERS[0] <= apart * moved_to <= FOVEA_DISC_DIAMETERS[1]

    engine = pipeline.engine
    box = preprocess.whole_image_box(rgb.shape)
    scale = pipeline.sizes.whole / box.side
    shift = (int(round((fovea[0] - cx) * scale * (moved_to - 1))), int(round((fovea[1] - cy) * scale * (moved_to - 1))))

    class PeakMoved:
        """The shipped engine, with its fovea heatmap's peak moved along the disc-fovea line."""

        def __getattr__(self, name):
            return getattr(engine, name)

        def run(self, feeds):
            out = dict(engine.run(feeds))
            heat = np.zeros_like(out["fovea"])
            heat[0, 0] = np.roll(out["fovea"][0, 0], shift[::-1], axis=(0, 1))
            out["fovea"] = heat
            return out

    moved = ScreeningPipeline(PeakMoved(), pipeline.policy)
    heat = moved.engine.run({"image": preprocess.to_input(rgb, box, pipeline.sizes.whole)})["fovea"][0, 0]
    assert heat.max() >= 0.3  # still a confident peak: only its place makes it implausible
    found, moved_fovea = moved.locate_disc(rgb)
    assert found is not None and moved_fovea is None


def test_a_photo_on_its_side_is_refused_not_graded_across_the_disc(shared_data):
    """Turned a quarter either way, the macula sits above or below the disc: the worker is told so."""
    from models.datasets import read_dataset

    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    for rec in read_dataset(shared_data / "refuge-val")[:3]:
        rgb = read_rgb(rec.image_path)
        upright = pipeline.screen(rgb)
        assert upright.gradable and upright.measurements is not None, rec.id
        for turns in (1, 3):
            turned = pipeline.screen(np.ascontiguousarray(np.rot90(rgb, turns)))
            assert not turned.gradable and turned.measurements is None, (rec.id, turns)
            assert any("turned on its side" in r for r in turned.reasons), turned.reasons


def test_a_photo_upside_down_or_of_the_other_eye_is_not_recorded_against_this_eye():
    """The unit knows which eye it photographs: a macula on the wrong side of the disc is refused."""
    from models import synthetic

    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    for seed, eye, other in ((0, "right", "left"), (1, "left", "right")):
        photo = synthetic.render(synthetic.random_eye(seed, laterality=eye), (1024, 1024), seed=seed).image
        assert pipeline.screen(photo, eye=eye).measurements is not None, eye  # the right eye: screened
        for shown, named in ((photo, other), (np.ascontiguousarray(np.rot90(photo, 2)), eye)):
            refused = pipeline.screen(shown, eye=named)
            assert not refused.gradable and refused.measurements is None, (eye, named)
            assert any("wrong side of the optic disc" in r for r in refused.reasons), refused.reasons


def test_an_engine_built_for_256_px_runs_both_passes_at_256(refuge_photo):
    """A TensorRT engine is built for the file's own 256 x 256: the pipeline gives it full-size views, and
    the smaller ones only to an engine that takes any size."""
    from models.runtime import registry
    from models.runtime.engine import OnnxEngine

    rgb = read_rgb(refuge_photo)
    fixed = OnnxEngine(registry.model_file("segmentation", "fp32")[0], threads=1)  # declares 256 x 256 only
    pipeline = ScreeningPipeline(fixed, ScreeningPipeline.from_artifacts(precision="fp32", threads=1).policy)
    assert pipeline.sizes == preprocess.FULL_PASSES
    result = pipeline.screen(rgb)
    assert result.measurements is not None
    assert result.segmentation.disc_prob.shape == (256, 256)
    assert result.segmentation.box == preprocess.disc_crop_box(*pipeline.locate_disc(rgb)[0], rgb.shape)


def test_every_step_of_a_screening_is_timed(refuge_photo):
    """What `glaucoscreen bench --profile` reads: each step's milliseconds, and the whole in `total`."""
    pipeline = ScreeningPipeline.from_artifacts(precision="int8", threads=1, disc_classifier=True)
    result = pipeline.screen(read_rgb(refuge_photo))
    t = result.timings_ms
    steps = {"gate", "pass1_input", "pass1", "locate", "pass2_input", "pass2", "classifier", "clean", "measure", "fusion"}
    assert steps <= set(t) and all(t[s] >= 0 for s in steps)
    assert sum(t[s] for s in steps) <= t["total"] * 1.001
    assert set(result.to_dict()["timings_ms"]) == set(t)
    refused = pipeline.screen(np.zeros((480, 640, 3), np.uint8))  # no retina: the gate alone ran
    assert set(refused.timings_ms) == {"gate", "total"}


def test_the_gate_reads_the_halvings_pass_1_reads(refuge_photo):
    """The gate's report on a photo is the same whether it makes the photo's halvings itself or is given
    the screening's, so the pipeline shrinks a large photo once for both."""
    from models import synthetic

    photo = synthetic.render(synthetic.random_eye(7), size=(1536, 2048)).image
    shrinks = preprocess.Shrinks(photo)
    gate = ScreeningPipeline.from_artifacts(precision="fp32", threads=1).gate
    own, shared = gate.assess(photo), gate.assess(photo, shrinks=shrinks)
    assert own.to_dict() == shared.to_dict()
    assert len(shrinks._levels) > 1  # the gate did make halvings, which pass 1 then reads
    other = preprocess.Shrinks(np.ascontiguousarray(photo[::-1]))  # another photo's: not used
    assert gate.assess(photo, shrinks=other).to_dict() == own.to_dict()


def test_outlines_on_the_photo_are_those_of_the_whole_photo_resampled(shared_data):
    """Only the crop's part of the photo is resampled and cleaned for the stored masks and the overlay; what
    comes out is what resampling the maps onto the whole photo gave."""
    from device.screening.measurements import clean_masks

    pipeline = ScreeningPipeline.from_artifacts(precision="int8", threads=1)
    for path in (sorted((shared_data / "drishti-gs1" / "images").iterdir())[0], sorted((shared_data / "refuge-val" / "images").iterdir())[0]):
        rgb = read_rgb(path)
        seg = pipeline.screen(rgb).segmentation
        disc, cup = seg.masks_on_photo(rgb.shape)
        whole = clean_masks(preprocess.unwarp(seg.disc_prob, seg.box, rgb.shape), preprocess.unwarp(seg.cup_prob, seg.box, rgb.shape))
        assert disc.shape == rgb.shape[:2] and disc.sum() > 1000 and cup.any()
        np.testing.assert_array_equal(disc, whole[0])
        np.testing.assert_array_equal(cup, whole[1])


def test_pass_1_on_the_photos_band_finds_the_disc_the_whole_letterbox_finds():
    """On a 4:3 photo pass 1 leaves out the letterbox's black bars (a quarter of its pixels); the disc and
    the fovea come out where the whole letterbox puts them."""
    from models import synthetic

    photo = synthetic.render(synthetic.random_eye(3), size=(1536, 2048)).image
    trimmed = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    assert trimmed.sizes.trim_letterbox
    whole = ScreeningPipeline(trimmed.engine, trimmed.policy, sizes=preprocess.PassSizes(crop=224))
    (cx, cy, d), fovea = trimmed.locate_disc(photo)
    (cx0, cy0, d0), fovea0 = whole.locate_disc(photo)
    step = 2048 / 256  # photo pixels per pixel of pass 1's maps
    assert abs(cx - cx0) < step and abs(cy - cy0) < step and abs(d - d0) <= step
    assert fovea is not None and fovea0 is not None and np.hypot(fovea[0] - fovea0[0], fovea[1] - fovea0[1]) < step

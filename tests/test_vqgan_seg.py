"""VQ-GAN-Seg: label maps read as class ids, a segmentation VQ-GAN trained with cross-entropy, and its pixel
accuracy / FWIoU on held-out maps (tools/evaluate.py vqgan)."""
import io
import json

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from evaluation.statistics import confusion_matrix, segmentation_scores
from model.vqgan import VQGAN, VQGANConfig
from preprocess.readers import BAD_LABEL_MAP, SkipInput, label_map
from pretrain.vqgan_trainer import load_config, train
from tools import evaluate
from tools.make_demo_data import encode_jpeg, random_spec, render_frame, render_label_map

SEG = dict(resolution=32, num_classes=4, in_channels=4, out_channels=4, ch=16, ch_mult=(1, 2, 2), z_channels=16,
           embed_dim=16, codebook_size=128, norm_groups=4, attn_levels=())


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_label_maps_keep_their_class_ids():
    labels = np.zeros((40, 60), np.uint8)
    labels[5:25, 10:30], labels[30:, 40:] = 2, 3
    for data in (png(labels), png(labels.astype(np.uint16) * 100)):
        read = label_map(data, 20, 301)
        assert read.shape == (20, 20) and set(np.unique(read)) <= {0, 2, 3, 200, 300}  # nearest: no blended ids
    palette = Image.fromarray(labels, "L").convert("P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    assert set(np.unique(label_map(buffer.getvalue(), 20, 4))) == {0, 2, 3}  # P: the palette index is the class
    for bad, detail in ((png(np.zeros((8, 8, 3), np.uint8)), "mode RGB"), (png(labels), "class ids 0..3"),
                        (b"not a png", "undecodable")):
        with pytest.raises(SkipInput) as error:
            label_map(bad, 8, 3)
        assert error.value.reason == BAD_LABEL_MAP and detail in str(error.value)


def test_segmentation_scores_by_hand():
    truth = np.array([[0, 0, 0, 1], [0, 0, 2, 2]])
    predicted = np.array([[0, 0, 1, 1], [0, 0, 2, 0]])
    confusion = confusion_matrix(truth, predicted, 4)
    assert confusion[0, 0] == 4 and confusion[0, 1] == 1 and confusion[2, 0] == 1
    scores = segmentation_scores(confusion)
    iou = [4 / 6, 1 / 2, 1 / 2]  # class 3 absent from both maps: left out of the mean
    assert scores["pixel_accuracy"] == pytest.approx(6 / 8)
    assert scores["fwiou"] == pytest.approx(5 / 8 * iou[0] + 1 / 8 * iou[1] + 2 / 8 * iou[2])
    assert scores["miou"] == pytest.approx(np.mean(iou))


def test_a_seg_model_reads_label_maps_and_writes_logits():
    with pytest.raises(ValueError, match="set in_channels and out_channels to 4"):
        VQGANConfig.from_preset("tiny", num_classes=4)
    torch.manual_seed(0)
    model = VQGAN(VQGANConfig.from_preset("tiny", **SEG)).eval()
    labels = torch.randint(0, 4, (2, 32, 32))
    codes = model.encode(labels)
    assert codes.shape == (2, 8, 8) and model.decode(codes).shape == (2, 4, 32, 32)
    assert model.decode_labels(codes).shape == (2, 32, 32)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        model.encode(labels + 4)
    with pytest.raises(ValueError, match="needs a VQ-GAN-Seg"):
        VQGAN(VQGANConfig.from_preset("tiny")).decode_labels(codes)


@pytest.fixture(scope="module")
def label_tars(tmp_path_factory):
    """The demo's shapes as images with their label maps ({key}.seg.png), a training and a held-out tar."""
    root = tmp_path_factory.mktemp("seg")
    for split, count, seed in (("train", 160, 0), ("heldout", 32, 1)):
        rng = np.random.default_rng(seed)
        with wds.TarWriter(str(root / f"{split}.tar")) as writer:
            for i in range(count):
                spec = random_spec(rng, speed=None)
                writer.write({"__key__": f"{i:06d}", "jpg": encode_jpeg(render_frame(spec, 0.0, 32)),
                              "seg.png": png(render_label_map(spec, 0.0, 32))})
            writer.write({"__key__": "rgb", "jpg": encode_jpeg(render_frame(spec, 0.0, 32)),
                          "seg.png": png(render_frame(spec, 0.0, 32))})  # a colour image, not a label map
    return root


def test_train_a_vqgan_seg_and_evaluate_it(label_tars, tmp_path, capsys, caplog):
    overrides = ["--data.paths", f"[{label_tars / 'train.tar'}]", "--data.num_workers", "0",
                 "--data.shuffle_buffer", "32", "--trainer.batch_size", "8", "--trainer.steps", "300",
                 "--trainer.checkpoint_every", "300", "--trainer.restart_every", "20",
                 "--trainer.output_dir", str(tmp_path / "run"), "--optim.lr", "3e-3"]
    for key, value in SEG.items():
        overrides += [f"--model.{key}", json.dumps(list(value) if isinstance(value, tuple) else value)]
    summary = train(load_config(None, overrides))
    assert "pixel_accuracy" in summary and "bad_label_map" in caplog.text
    capsys.readouterr()
    evaluate.main(["vqgan", "--vqgan", str(tmp_path / "run" / "final"), "--data", str(label_tars / "heldout.tar")])
    result = json.loads(capsys.readouterr().out)
    background = np.mean([(label_map(m, 32, 4) == 0).mean() for m in _heldout_maps(label_tars)])
    assert result["count"] == 32 and result["protocol"]["skipped"] == {"data": {"bad_label_map": 1}}
    assert result["pixel_accuracy"] >= 0.95 and result["pixel_accuracy"] > background + 0.7 * (1 - background), result
    assert result["fwiou"] > 0.9 and result["miou"] > 0.8, result  # measured: 99.5%, 0.991, 0.973


def _heldout_maps(root):
    return [sample["seg.png"] for sample in wds.WebDataset(str(root / "heldout.tar"), shardshuffle=False)
            if sample["__key__"] != "rgb"]

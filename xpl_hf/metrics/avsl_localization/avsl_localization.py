"""``evaluate`` metric: cIoU / AUC of audio-visual source localization maps (the community's protocol).

A thin wrapper around :func:`xpl_hf.metrics.protocol.localization_metrics` (the one implementation), loadable offline::

    import evaluate
    from xpl_hf import METRIC_PATH

    metric = evaluate.load(METRIC_PATH)                    # references = 224 x 224 ground-truth maps
    metric = evaluate.load(METRIC_PATH, "union")           # references = VGG-SS boxes (normalised)
    metric = evaluate.load(METRIC_PATH, "flickr")          # references = Flickr boxes of all annotators / 256

    # the extended protocol (SLAVC): each map's confidence, and the confidences of the same frames with another sound
    metric.compute(predictions=maps, references=boxes, confidences=c_true, negative_confidences=c_swapped)
"""

# One import per line: evaluate parses the imports of this script to check its dependencies.
# ruff: noqa: I001
import datasets
import evaluate
import numpy as np
from xpl_hf.metrics.extended import EXTENDED_PROTOCOL
from xpl_hf.metrics.extended import extended_protocol
from xpl_hf.metrics.extended import ground_truth_areas
from xpl_hf.metrics.extended import size_subsets
from xpl_hf.metrics.ground_truth import as_box_array
from xpl_hf.metrics.ground_truth import ground_truth_map
from xpl_hf.metrics.protocol import PROTOCOL
from xpl_hf.metrics.protocol import localization_metrics

_DESCRIPTION = """\
Audio-visual source localization metrics of LVS / EZ-VSL / SLAVC / XPL. Each raw localization map (any
resolution) is upsampled to 224 x 224 (bicubic, align_corners=False), min-max normalised (a flat map is left
unchanged) and binarised at its median (pixels >= sorted(map)[25088]). The per-sample cIoU is
sum(B*G) / (sum(G) + sum(B*(G==0))) (0 for an empty ground truth). `ciou` is 100 x the fraction of samples with
cIoU >= 0.5, `auc` is 100 x the area under the success-rate curve over the thresholds 0, 0.05, ..., 1.
`sizes` splits them by ground-truth area at 224 px (small < 32², medium < 96², large < 144², huge). Given each map's
confidence and the confidences of negatives (the same frames with another clip's sound), `extended` holds the
extended protocol of SLAVC: AP@0.5, AP@0.75, max-F1@0.5 and precision / recall / F1 at a confidence of 0.5.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of raw localization maps, each a 2-D array (h, w) of any resolution (nested lists or
        numpy arrays).
    references: configuration "default": list of 224 x 224 ground-truth maps (values in [0, 1]; others are
        refused);
        configuration "union" (VGG-SS) or "flickr" (Flickr-SoundNet): list of box lists, each box
        [x0, y0, x1, y1] normalised to [0, 1] (Flickr: 256-px annotation coordinates / 256, all annotators);
        coordinates are clipped to [0, 1] as the protocol does; NaN, infinite or above 2 (pixel units) are refused.
    confidences (list of float, optional): each prediction's confidence (e.g. `xpl_hf.maps.map_confidence`); with
        `negative_confidences`, adds `extended`.
    negative_confidences (list of float, optional): confidences of the negatives (frames whose sound comes from
        another clip: no visible source); any number of them.
Returns:
    ciou (float): percentage of samples with cIoU >= 0.5 (the number papers report as CIoU).
    auc (float): 100 x area under the success rate over the thresholds 0, 0.05, ..., 1.
    mean_ciou (float): mean per-sample cIoU in [0, 1].
    per_sample_ciou (np.ndarray): cIoU of each sample, in input order.
    sizes (dict): {"small" | "medium" | "large" | "huge": {"ciou", "auc", "mean_ciou", "num_samples"}}.
    extended (dict, with confidences): {"ap50", "max_f1_50", "precision_50", "recall_50", "f1_50", the same with
        75, "roc_auc", "num_positives", "num_negatives", "confidence_threshold"} (percentages).
Examples:
    >>> metric = evaluate.load(METRIC_PATH, "union")
    >>> metric.compute(predictions=[[[0.0, 1.0], [0.0, 1.0]]], references=[[[0.5, 0.0, 1.0, 1.0]]])["ciou"]
    100.0
"""

_CITATION = """\
@inproceedings{chen2021localizing,
  title={Localizing Visual Sounds the Hard Way},
  author={Chen, Honglie and Xie, Weidi and Afouras, Triantafyllos and Nagrani, Arsha and Vedaldi, Andrea
          and Zisserman, Andrew},
  booktitle={CVPR},
  year={2021}
}
"""

_MAP = datasets.List(datasets.List(datasets.Value("float32")))
_BOXES = datasets.List(datasets.List(datasets.Value("float64")))
_BOX_RULES = ("union", "flickr")
# Box coordinates a little outside [0, 1] are clipped by the protocol (VGG-SS holds some); beyond this they are pixels.
_MAX_COORDINATE = 2.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class AvslLocalization(evaluate.Metric):
    """cIoU / AUC of localization maps; the configuration picks what ``references`` holds (maps or boxes)."""

    def _info(self):
        if self.config_name not in ("default", *_BOX_RULES):
            raise ValueError(
                f"unknown configuration {self.config_name!r}; expected 'default' (ground-truth maps), "
                f"'union' (VGG-SS boxes) or 'flickr' (Flickr-SoundNet boxes)"
            )
        references = _BOXES if self.config_name in _BOX_RULES else _MAP
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _MAP, "references": references}),
            reference_urls=["https://github.com/hche11/Localizing-Visual-Sounds-the-Hard-Way"],
        )

    def _reference_map(self, index, boxes):
        """Boxes of reference ``index`` -> its ground-truth map; refuses non-finite and pixel-unit coordinates."""
        try:
            boxes = as_box_array(boxes)
        except ValueError as error:
            raise ValueError(f"reference {index}: {error}") from None
        if not np.isfinite(boxes).all():
            raise ValueError(f"reference {index}: a box coordinate is NaN or infinite: {boxes.tolist()}")
        if boxes.size and boxes.max() > _MAX_COORDINATE:
            raise ValueError(f"reference {index}: boxes must be normalised to [0, 1], got {boxes.tolist()} (pixel "
                             "units? divide x by the image width and y by its height)")
        return ground_truth_map(boxes, self.config_name)

    def _compute(self, predictions, references, confidences=None, negative_confidences=None):
        # Maps stay as given: the protocol reads each one and names the index of a ragged or non-finite one.
        if self.config_name in _BOX_RULES:
            references = [self._reference_map(index, boxes) for index, boxes in enumerate(references)]
        results = localization_metrics(predictions, references)
        results["protocol"] = dict(PROTOCOL, ground_truth=self.config_name)
        results["sizes"] = size_subsets(results["per_sample_ciou"], ground_truth_areas(references))
        if (confidences is None) != (negative_confidences is None):
            raise ValueError("pass both `confidences` (one per prediction) and `negative_confidences`, or neither")
        if confidences is not None:
            results["extended"] = extended_protocol(confidences, results["per_sample_ciou"], negative_confidences)
            results["protocol"]["extended"] = dict(EXTENDED_PROTOCOL)
        return results


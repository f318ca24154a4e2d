"""Label mapping of a model's outputs onto the dataset's classes, against probabilities computed by hand."""

import json

import pytest
import torch

from conftest import CELEBA_ATTRIBUTES
from fair_core.errors import FairError
from fair_core.label_map import build_label_map, read_label_map


def test_labels_equal_to_the_classes_pass_the_logits_through_untouched():
    scores = torch.randn(5, 3)
    label_map = build_label_map(("a", "b", "c"), ("a", "b", "c"), multi_label=False)
    assert label_map.identity and label_map(scores) is scores


def test_names_match_exactly_then_case_insensitively_and_select_columns():
    scores = torch.randn(6, 4)
    label_map = build_label_map(("square", "circle"), ("Circle", "noise", "square", "SQUARE"), multi_label=False)
    mapped = label_map(scores)
    assert torch.equal(mapped, scores[:, [2, 0]])  # "square" exactly (not "SQUARE"), "circle" ignoring case
    probs = scores.softmax(1)
    expected = probs[:, [2, 0]] / probs[:, [2, 0]].sum(1, keepdim=True)  # renormalised over the classes
    torch.testing.assert_close(mapped.softmax(1), expected)


def test_a_map_sums_the_probabilities_of_its_labels_per_class_and_per_pixel():
    scores = torch.randn(4, 5, 3, 2)  # a segmenter: (N, L, h, w)
    mapping = {"cat": ["tabby", "tiger cat"], "dog": "beagle", "other": ["car", "tree"]}
    label_map = build_label_map(("cat", "dog", "other"), ("tabby", "beagle", "tiger cat", "car", "tree"), False, mapping)
    p = scores.softmax(1)
    sums = torch.stack([p[:, 0] + p[:, 2], p[:, 1], p[:, 3] + p[:, 4]], 1)  # every label used: sums are 1
    torch.testing.assert_close(label_map(scores).softmax(1), sums)
    torch.testing.assert_close(label_map(scores) - label_map(scores).logsumexp(1, keepdim=True), sums.log())
    assert label_map.describe(("cat", "dog", "other"), ("tabby", "beagle", "tiger cat", "car", "tree")) == {
        "cat": ["tabby", "tiger cat"], "dog": ["beagle"], "other": ["car", "tree"]}


@pytest.mark.parametrize(("classes", "column"), [(("not Blond_Hair", "Blond_Hair"), "Blond_Hair"),
                                                 (("Female", "Male"), "Male")])
def test_a_multi_label_model_scores_a_binary_celeba_target_with_one_sigmoid(classes, column):
    logits = torch.randn(7, len(CELEBA_ATTRIBUTES)) * 3
    label_map = build_label_map(classes, tuple(CELEBA_ATTRIBUTES), multi_label=True)
    p = torch.sigmoid(logits[:, CELEBA_ATTRIBUTES.index(column)]).double()
    mapped = label_map(logits).double().exp()  # exact log-probabilities: (1 - p, p)
    torch.testing.assert_close(mapped, torch.stack([1 - p, p], 1), atol=1e-6, rtol=1e-5)
    assert label_map.describe(classes, tuple(CELEBA_ATTRIBUTES))[classes[0]] == f"1 - {column}"


def test_a_multi_label_map_of_one_class_of_a_binary_target_takes_the_other_as_its_complement():
    logits = torch.randn(5, 3)
    label_map = build_label_map(("young", "old"), ("Young", "Smiling", "Male"), True, {"old": ["Smiling", "Male"]})
    p = torch.sigmoid(logits[:, 1]) + torch.sigmoid(logits[:, 2])  # summed probabilities (may pass 1)
    expected = torch.stack([(1 - p).clamp_min(0), p], 1)
    torch.testing.assert_close(label_map(logits).exp(), expected, atol=1e-6, rtol=1e-5)


def test_bad_maps_are_one_line_naming_the_class_and_the_labels(tmp_path):
    labels = ("tabby", "beagle")
    with pytest.raises(FairError, match=r"--label-map m.json: the class \"cat\" maps to the label \"lion\", which the "
                                        r"model lacks \(model labels: \"tabby\", \"beagle\"\)"):
        build_label_map(("cat", "dog"), labels, False, {"cat": "lion", "dog": "beagle"}, "m.json")
    with pytest.raises(FairError, match=r"--label-map m.json: the dataset class\(es\) \"dog\" are unmapped; .*\"beagle\""):
        build_label_map(("cat", "dog"), labels, False, {"cat": "tabby"}, "m.json")
    with pytest.raises(FairError, match=r"\"horse\" is not a class of the evaluation data \(classes: \"cat\", \"dog\"\)"):
        build_label_map(("cat", "dog"), labels, False, {"cat": "tabby", "dog": "beagle", "horse": "beagle"}, "m.json")
    with pytest.raises(FairError, match=r"timm:x: the dataset class\(es\) \"dog\" are not among the model's labels .*"
                                        r"pass --label-map FILE"):
        build_label_map(("cat", "dog"), ("cat", "car"), False, model="timm:x")
    many = tuple(f"label{i}" for i in range(1000))
    with pytest.raises(FairError, match=r"\"label7\", \.\.\. \(1000 in all\)") as error:  # a bounded line
        build_label_map(("cat",), many, False)
    assert len(str(error.value)) < 500 and "\n" not in str(error.value)
    with pytest.raises(FairError, match="the model gives 3 scores per sample for its 2 labels"):
        build_label_map(("cat", "dog"), ("dog", "cat"), False)(torch.zeros(1, 3))


def test_label_map_files_are_objects_of_labels_or_lists_of_labels(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"cat": "tabby", "dog": ["beagle", "pug"]}))
    assert read_label_map(good) == {"cat": ["tabby"], "dog": ["beagle", "pug"]}
    for content, message in (([["cat", "tabby"]], "expected a JSON object"), ({"cat": []}, "non-empty list"),
                             ({"cat": 3}, "the class \"cat\" maps to 3"), ("{", None)):
        bad = tmp_path / "bad.json"
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        with pytest.raises(FairError, match=message or "unreadable label map"):
            read_label_map(bad)
    with pytest.raises(FairError, match="label map not found"):
        read_label_map(tmp_path / "missing.json")

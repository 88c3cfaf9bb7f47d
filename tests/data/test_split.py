import pandas as pd
import pytest

from pneumodet.data.split import assign_folds, fold_split, read_groups, split_images
from pneumodet.errors import UserError


def _images(n=400):
    classes = ["Lung Opacity", "Normal", "No Lung Opacity / Not Normal"]
    return pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)],
                         "label_class": [classes[i % 3] for i in range(n)],
                         "view": ["AP" if i % 5 < 2 else "PA" for i in range(n)]})


def test_deterministic_and_seed_dependent():
    images = _images()
    a, b = split_images(images, 0.2, seed=1), split_images(images, 0.2, seed=1)
    assert a.equals(b)
    assert not a.equals(split_images(images, 0.2, seed=2))


def test_fraction_and_stratification():
    images = _images()
    split = split_images(images, 0.2, seed=0).merge(images, on="patient_id")
    assert (split["split"] == "val").mean() == pytest.approx(0.2, abs=0.01)
    per_stratum = split.groupby(["label_class", "view"])["split"].apply(lambda s: (s == "val").mean())
    assert per_stratum.between(0.15, 0.25).all()


def test_groups_never_straddle_the_split():
    images = _images(300)
    groups = {f"p{i}": f"person{i // 3}" for i in range(300)}  # three images per person
    split = split_images(images, 0.25, seed=4, groups=groups)
    split["group"] = split["patient_id"].map(groups)
    assert (split.groupby("group")["split"].nunique() == 1).all()
    assert 0.15 < (split["split"] == "val").mean() < 0.35


def test_small_set_still_gets_a_val_image():
    split = split_images(_images(12), 0.1, seed=0)
    assert (split["split"] == "val").sum() == 1


def test_bad_fraction_and_groups_file(tmp_path):
    with pytest.raises(UserError):
        split_images(_images(10), 1.5)
    (tmp_path / "g.csv").write_text("id,person\na,b\n")
    with pytest.raises(UserError, match="patientId,group"):
        read_groups(tmp_path / "g.csv")
    (tmp_path / "ok.csv").write_text("patientId,group\na,x\nb,x\n")
    assert read_groups(tmp_path / "ok.csv") == {"a": "x", "b": "x"}


def test_folds_are_stratified_grouped_balanced_and_seeded():
    images = _images(300)
    groups = {f"p{i}": f"person{i // 3}" for i in range(300)}  # three images per person
    folds = assign_folds(images, 5, seed=2, groups=groups)
    assert folds.equals(assign_folds(images, 5, seed=2, groups=groups))
    assert not folds.equals(assign_folds(images, 5, seed=3, groups=groups))
    frame = images.assign(fold=folds, group=images["patient_id"].map(groups))
    assert (frame.groupby("group")["fold"].nunique() == 1).all()  # a person never straddles two folds
    assert sorted(frame["fold"].unique()) == [0, 1, 2, 3, 4]
    sizes = frame["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 3  # one group of 3 at most between the largest and the smallest
    # without groups every (class, view) stratum is spread evenly: fold sizes within it differ by one at most
    alone = images.assign(fold=assign_folds(images, 5, seed=2))
    per_stratum = alone.groupby(["label_class", "view"])["fold"].value_counts().unstack(fill_value=0)
    assert ((per_stratum.max(axis=1) - per_stratum.min(axis=1)) <= 1).all()
    one = fold_split(frame.assign(fold=frame["fold"].astype(str)), 2)
    assert set(one.loc[one["split"] == "val", "patient_id"]) == set(frame.loc[frame["fold"] == 2, "patient_id"])
    with pytest.raises(UserError):
        assign_folds(images, 1)


def test_a_groups_class_is_its_most_positive_images_whatever_the_order():
    """A person with a normal film and one with an opacity is an opacity case for stratification, however their
    images are listed (by id, by class, reversed)."""
    from pneumodet.data.split import _groups_by_stratum

    images = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "view": ["PA", "PA", "AP", "AP"],
                           "label_class": ["Normal", "Lung Opacity", "No Lung Opacity / Not Normal", "Normal"]})
    groups = {"a": "p1", "b": "p1", "c": "p2", "d": "p2"}
    for order in (images, images.iloc[::-1], images.sort_values("label_class", ascending=False)):
        _, per_group = _groups_by_stratum(order.reset_index(drop=True), groups)
        assert per_group.at["p1", "label_class"] == "Lung Opacity" and per_group.at["p1", "size"] == 2
        assert per_group.at["p2", "label_class"] == "No Lung Opacity / Not Normal"

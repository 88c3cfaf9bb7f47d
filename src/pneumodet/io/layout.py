"""The Kaggle competition's file layout (names, and which files in a folder are its images)."""

from pathlib import Path

TRAIN_LABELS = "stage_2_train_labels.csv"
CLASS_INFO = "stage_2_detailed_class_info.csv"
SAMPLE_SUBMISSION = "stage_2_sample_submission.csv"
TRAIN_IMAGES = "stage_2_train_images"
TEST_IMAGES = "stage_2_test_images"
#: the name ``predict --dicom-sr`` gives a report: ``ID.sr.dcm``
SR_SUFFIX = ".sr.dcm"


def image_files(folder: str | Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """Return ``folder``'s image files in name order, and the files left out as (file, the file kept).

    An image file is a plain file named ``*.dcm`` in any letter case. Left out without a word: hidden names (a
    leading dot: macOS's ``._`` copies, editors' and pneumodet's own temporary files) and the DICOM Structured
    Reports ``predict --dicom-sr`` writes (``*.sr.dcm``), which hold no image. Left out and returned: a file
    whose patientId (its name without the suffix) an earlier file already has, e.g. ``A.dcm`` beside
    ``A.DCM``: one patientId must be one image, one row of a submission.
    """
    kept: dict[str, Path] = {}
    repeats = []
    for path in sorted(Path(folder).iterdir()):
        if (path.suffix.lower() != ".dcm" or path.name.startswith(".") or path.name.lower().endswith(SR_SUFFIX)
                or not path.is_file()):
            continue
        if path.stem in kept:
            repeats.append((path, kept[path.stem]))
        else:
            kept[path.stem] = path
    return list(kept.values()), repeats

